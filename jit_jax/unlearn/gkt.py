"""GKT (gated knowledge transfer), one of the methods the paper compares JiT with, as the authors'
harness runs it (zero-shot, full class; :func:`gkt` has the details).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jit_jax.models.layers import conv
from jit_jax.train import compile_estimate
from jit_jax.unlearn._common import _full_class_only
from jit_jax.unlearn.distill import kl_terms

if TYPE_CHECKING:
    from jit_jax.unlearn import MethodOutput, Request


class PseudoImageGenerator(nnx.Module):
    """GKT's generator: z (z_dim) -> dense -> ReLU -> (s, s, z_dim/2) with s = size/4 -> BN ->
    2 x [transposed conv 4x4 stride 2 (doubles the size) -> BN -> LeakyReLU 0.2] (z_dim/2, then
    z_dim/4 channels) -> conv 3x3 -> BN with affine parameters: images (size, size, channels),
    NHWC. Its BatchNorms always use batch statistics (the authors never switch it to eval)."""

    def __init__(self, z_dim: int, size: int, channels: int, *, rngs: nnx.Rngs):
        if size % 4 or size < 4:
            raise ValueError(f"GKT's generator needs an image size divisible by 4; got {size}")
        if z_dim < 4 or z_dim % 4:
            raise ValueError(f"z_dim={z_dim}; accepted: a multiple of 4, at least 4")
        inter = z_dim // 2
        self.s, self.inter = size // 4, inter
        self.fc = nnx.Linear(z_dim, inter * self.s * self.s, rngs=rngs)

        def bn(n):
            return nnx.BatchNorm(n, use_running_average=False, momentum=0.9, epsilon=1e-5,
                                 rngs=rngs)

        def up(i, o):
            return nnx.ConvTranspose(i, o, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                                     rngs=rngs)

        self.bn0, self.up1, self.bn1 = bn(inter), up(inter, inter), bn(inter)
        self.up2, self.bn2 = up(inter, inter // 2), bn(inter // 2)
        self.conv = nnx.Conv(inter // 2, channels, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.bn3 = bn(channels)

    def __call__(self, z):
        x = jax.nn.relu(self.fc(z)).reshape(z.shape[0], self.s, self.s, self.inter)
        x = self.bn0(x)
        x = jax.nn.leaky_relu(self.bn1(upsample2x(x, self.up1.kernel[...], self.up1.bias[...])),
                              0.2)
        x = jax.nn.leaky_relu(self.bn2(upsample2x(x, self.up2.kernel[...], self.up2.bias[...])),
                              0.2)
        x = conv(x, self.conv.kernel[...], padding=((1, 1), (1, 1))) + self.conv.bias[...]
        return self.bn3(x)


def upsample2x(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """``nnx.ConvTranspose(kernel_size=(4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))`` (torch's
    ``ConvTranspose2d(4, stride=2, padding=1)``), NHWC (B, H, W, I) -> (B, 2H, 2W, O), computed
    as four stride-1 convolutions of the undilated input, one per output phase, through
    :func:`jit_jax.models.layers.conv` (so with the backend's convolution rule).

    The transposed convolution is a correlation of the input dilated by 2 (zeros between pixels)
    with the 4x4 kernel, padded by 2: output row ``2i + a`` only meets input rows through the
    kernel rows ``t`` with ``a + t`` even, ``x[i-1] K[0] + x[i] K[2]`` for ``a = 0`` and
    ``x[i] K[1] + x[i+1] K[3]`` for ``a = 1`` (the same for columns). With the input padded by 1,
    phase ``(a, b)`` is the VALID correlation of ``x_pad[a:a+H+1, b:b+W+1]`` with
    ``K[a::2, b::2]``; the phases are interleaved into the output. It skips the multiplications
    by the dilation's zeros (a quarter of the work) and, on the CPU, XLA's slow gradient of a
    dilated convolution."""
    b, h, w, _ = x.shape
    if kernel.shape[:2] != (4, 4):
        raise ValueError(f"upsample2x takes a 4x4 kernel; got {kernel.shape}")
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = []
    for a in (0, 1):
        cols = [conv(xp[:, a:a + h + 1, c:c + w + 1, :], kernel[a::2, c::2]) for c in (0, 1)]
        rows.append(jnp.stack(cols, axis=3))  # (B, H, W, 2, O)
    out = jnp.stack(rows, axis=2)  # (B, H, 2, W, 2, O)
    return out.reshape(b, 2 * h, 2 * w, kernel.shape[-1]) + bias


def attention_map(kind: str, act: jax.Array) -> jax.Array:
    """Attention transfer's map, as the authors' ``attention``: the squared activation averaged
    over torch's dimension 1, flattened per sample and L2-normalised. Dimension 1 is the channels
    of an NCHW conv output (here NHWC: the last axis) and the tokens of a (B, T, D) encoder
    output."""
    sq = jnp.square(act)
    a = jnp.mean(sq, axis=-1) if kind == "conv" else jnp.mean(sq, axis=1)
    a = a.reshape(a.shape[0], -1)
    return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the rows where ``mask`` is 1 and every other axis (torch's "mean" over the kept
    rows)."""
    per_row = x.reshape(x.shape[0], -1)
    count = jnp.maximum(jnp.sum(mask), 1.0) * per_row.shape[1]
    return jnp.sum(per_row * mask[:, None]) / count


def gkt_kl(student_logits, teacher_logits, mask, temperature: float = 1.0) -> jax.Array:
    """torch's ``F.kl_div(log_softmax(s/T), softmax(t/T))`` ("mean" over elements) on the kept
    rows."""
    return _masked_mean(kl_terms(student_logits, teacher_logits, temperature), mask)


def gkt_attention_loss(student_acts, teacher_acts, mask, beta: float) -> jax.Array:
    """``beta * sum over layers of mean((att(s) - att(t))^2)`` on the kept rows."""
    if len(student_acts) != len(teacher_acts):
        raise ValueError(f"{len(student_acts)} student against {len(teacher_acts)} teacher "
                         f"activations")
    total = jnp.zeros(())
    for (kind, s), (_, t) in zip(student_acts, teacher_acts, strict=True):
        total = total + beta * _masked_mean(
            jnp.square(attention_map(kind, s) - attention_map(kind, t)), mask)
    return total


def _gkt_acts(acts, kinds):
    return [(k, a) for k, a in acts if k in kinds]


@nnx.jit(static_argnames=("forget_class", "threshold"))
def _gkt_candidates(generator, teacher, z, forget_class: int, threshold: float):
    """Pseudo images and which of them the teacher does not call the forget class."""
    x = generator(z)
    p = jax.nn.softmax(teacher(x), axis=-1)[:, forget_class]
    return x, (p <= threshold).astype(jnp.float32)


@nnx.jit(static_argnames=("temperature",))
def _gkt_generator_step(generator, g_opt, student, teacher, z, mask, temperature: float):
    def loss_fn(g, s, t):  # s, t passed in: their BatchNorm statistics update in train mode
        x = g(z)
        return -gkt_kl(s(x), t(x), mask, temperature)  # the generator maximises the KL

    loss, grads = nnx.value_and_grad(loss_fn, argnums=0)(generator, student, teacher)
    g_opt.update(generator, grads)
    return loss


@nnx.jit(static_argnames=("temperature", "beta", "kinds"))
def _gkt_student_step(student, s_opt, teacher, x, mask, temperature: float, beta: float,
                      kinds: tuple[str, ...]):
    from jit_jax.models.layers import record_activations

    with record_activations() as t_acts:
        t_logits = teacher(x)
    t_logits = jax.lax.stop_gradient(t_logits)
    t_acts = [(k, jax.lax.stop_gradient(a)) for k, a in _gkt_acts(t_acts, kinds)]

    def loss_fn(m):
        with record_activations() as s_acts:
            s_logits = m(x)
        return (gkt_kl(s_logits, t_logits, mask, temperature)
                + gkt_attention_loss(_gkt_acts(s_acts, kinds), t_acts, mask, beta))

    loss, grads = nnx.value_and_grad(loss_fn)(student)
    s_opt.update(student, grads)
    return loss


def torch_onecycle(total_steps: int, max_lr: float, *, pct_start: float = 0.3,
                   div_factor: float = 25.0, final_div_factor: float = 1e4,
                   base_momentum: float = 0.85, max_momentum: float = 0.95):
    """torch's ``OneCycleLR`` defaults as two optax schedules ``(lr, momentum)``: cosine warm-up
    of the lr from max_lr/div_factor to max_lr over ``pct_start`` of the steps, then cosine down
    to (max_lr/div_factor)/final_div_factor; the momentum cycles the other way (max -> base ->
    max)."""
    warm = max(int(pct_start * total_steps), 1)
    lr = optax.cosine_onecycle_schedule(total_steps, max_lr, pct_start, div_factor,
                                        final_div_factor)

    def cos(a, b, n):
        return lambda t: b + (a - b) * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, n) / n))

    momentum = optax.join_schedules(
        [cos(max_momentum, base_momentum, warm),
         cos(base_momentum, max_momentum, max(total_steps - warm, 1))], [warm])
    return lr, momentum


def reinit_conv_kernels(model: nnx.Module, key: jax.Array) -> int:
    """Re-draw every convolution kernel of ``model`` in place (our :class:`Conv` and ViT's patch
    embedding, the torch ``Conv2d`` weights) from xavier-uniform, as GKT's ``weights_init``;
    biases and every other layer are kept. Returns how many kernels were re-drawn."""
    from jit_jax.models.layers import Conv
    from jit_jax.models.vit import PatchEmbedding

    glorot = jax.nn.initializers.glorot_uniform(in_axis=-2, out_axis=-1)
    n = 0
    for _, m in nnx.iter_graph(model):
        if isinstance(m, Conv | PatchEmbedding):
            k = m.kernel[...]
            m.kernel[...] = glorot(jax.random.fold_in(key, n), k.shape, k.dtype)
            n += 1
    return n


def default_rounds(model_name: str) -> int:
    """GKT's rounds (``pseudo_batches``) in the authors' code for a model of the registry: 101 for
    a ViT, 1000 otherwise."""
    return 101 if model_name.startswith("vit") else 1000


def gkt(req: Request, *, pseudo_batches: int | None = None, batch_size: int | None = None,
        generator_iters: int | None = None, student_iters: int | None = None,
        threshold: float = 0.01, temperature: float = 1.0, at_beta: float = 5.0,
        z_dim: int = 128, lr: float = 0.01, max_lr: float = 0.1, clip: float = 5.0,
        max_empty: int = 1050) -> MethodOutput:
    """GKT (gated knowledge transfer) as the JiT authors run it: zero-shot, full class.

    A generator makes pseudo images from noise z; only those the original model (the teacher)
    gives at most ``threshold`` probability of the forget class are used (the gate). The student
    is a copy of the model whose convolution kernels are re-drawn (xavier-uniform). Each z is used
    for ``generator_iters`` generator steps (maximise KL(teacher || student), forward KL as torch's
    ``kl_div``) and then ``student_iters`` student steps (minimise that KL plus ``at_beta`` times
    the attention-transfer loss over the conv outputs, or the encoder blocks of a ViT); then a new
    z is drawn. ``pseudo_batches`` such rounds. Both optimisers are SGD with momentum 0.9 and
    gradient-norm clipping at ``clip``: the generator at ``lr``, the student on torch's OneCycleLR
    up to ``max_lr``. Teacher and student run in train mode, as in their code. Defaults by model:
    ViT 101 rounds of 8 images, 1 + 5 iterations; otherwise 1000 rounds of 128 images, 2 + 15.
    A round whose images are all gated out is skipped (the authors' ``continue``); after
    ``max_empty`` of those in a row the method stops, as their retry loop does.
    """
    from jit_jax.unlearn import MethodOutput

    forget_class = _full_class_only(req, "gkt")
    vit = req.spec.name.startswith("vit")
    pseudo_batches = (default_rounds(req.spec.name) if pseudo_batches is None
                      else int(pseudo_batches))
    batch_size = (8 if vit else 128) if batch_size is None else int(batch_size)
    generator_iters = (1 if vit else 2) if generator_iters is None else int(generator_iters)
    student_iters = (5 if vit else 15) if student_iters is None else int(student_iters)
    for name, v, lo in (("pseudo_batches", pseudo_batches, 1), ("batch_size", batch_size, 1),
                        ("generator_iters", generator_iters, 0),
                        ("student_iters", student_iters, 1), ("max_empty", max_empty, 1)):
        if v < lo:
            raise ValueError(f"{name}={v}; accepted: an integer >= {lo}")
    h, w, c = req.dataset.image_shape
    if h != w:
        raise ValueError(f"GKT's generator makes square images; the data are {h}x{w}")
    kinds = ("encoder",) if vit else ("conv",)
    rng = np.random.default_rng(req.seed)
    t0 = time.perf_counter()
    teacher = nnx.clone(req.model)
    teacher.train()
    student = nnx.clone(req.model)
    n_convs = reinit_conv_kernels(student, jax.random.key(req.seed))
    if n_convs == 0:
        raise ValueError(f"gkt re-draws the model's convolution kernels, and {req.spec.name!r} "
                         f"has none: its student would start as the model itself (KL 0, no "
                         f"gradient); accepted: models with convolutions (cnn, simple_cnn, "
                         f"resnet18, vgg*, vit*)")
    student.train()
    generator = PseudoImageGenerator(z_dim, h, c, rngs=nnx.Rngs(req.seed))
    g_opt = nnx.Optimizer(generator, optax.chain(optax.clip_by_global_norm(clip),
                                                 optax.sgd(lr, momentum=0.9)), wrt=nnx.Param)
    lr_sched, mom_sched = torch_onecycle(pseudo_batches * student_iters, max_lr)
    s_opt = nnx.Optimizer(student, optax.chain(
        optax.clip_by_global_norm(clip),
        optax.inject_hyperparams(optax.sgd)(learning_rate=lr_sched, momentum=mom_sched)),
        wrt=nnx.Param)
    prep_time = time.perf_counter() - t0
    repeat = generator_iters + student_iters
    times, first, losses = [], {}, {"generator": [], "student": []}
    kept, calls, idx, rounds, empty_run, stopped = [], 0, 0, 0, 0, False
    z = None
    try:
        while rounds < pseudo_batches:
            if calls % repeat == 0:  # the loader draws a new z every `repeat` calls
                z = jnp.asarray(rng.standard_normal((batch_size, z_dim)), jnp.float32)
            calls += 1
            ts = time.perf_counter()  # one time per call: the gate, then the step it allows
            x, mask = _gkt_candidates(generator, teacher, z, forget_class, float(threshold))
            n_kept = int(jnp.sum(mask))
            if n_kept == 0:
                times.append(time.perf_counter() - ts)
                empty_run += 1
                if empty_run >= max_empty:
                    stopped = True
                    break
                continue
            empty_run = 0
            kept.append(n_kept)
            if idx % repeat < generator_iters:
                part = "generator"
                loss = _gkt_generator_step(generator, g_opt, student, teacher, z, mask,
                                           float(temperature))
            else:
                part = "student"
                loss = _gkt_student_step(student, s_opt, teacher, x, mask, float(temperature),
                                         float(at_beta), kinds)
            loss = float(loss)
            first.setdefault(part, len(times))
            times.append(time.perf_counter() - ts)
            if not np.isfinite(loss):
                raise FloatingPointError(f"GKT diverged: {part} loss {loss} at round {rounds}")
            losses[part].append(loss)
            if (idx + 1) % repeat == 0:
                rounds += 1
            idx += 1
    finally:
        student.eval()
    compile_time = compile_estimate(times, sorted(first.values()))
    return MethodOutput(student, prep_time + sum(times) - compile_time, compile_time, True,
                        {"config": {"pseudo_batches": pseudo_batches, "batch_size": batch_size,
                                    "generator_iters": generator_iters,
                                    "student_iters": student_iters, "threshold": threshold,
                                    "temperature": temperature, "at_beta": at_beta,
                                    "z_dim": z_dim, "lr": lr, "max_lr": max_lr, "clip": clip},
                         "losses": losses, "rounds": rounds, "stopped_early": stopped,
                         "mean_kept": float(np.mean(kept)) if kept else 0.0,
                         "convs_reinitialised": n_convs})
