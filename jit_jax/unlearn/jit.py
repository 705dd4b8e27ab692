"""JiT: zero-shot unlearning by smoothing the model around each forget sample.

Foster et al., "An Information Theoretic Approach to Machine Unlearning" (TMLR 2025). For a forget
batch X of B samples and N draws xi_ij ~ N(0, sigma^2 I):

    x~_ij = clip(x_i + xi_ij, min(X), max(X))              # batch-global range, as the authors' code
    l(X)  = (1/N) sum_j sum_i ||f(x_i) - sg[f(x~_ij)]||_2^p / ||x_i - x~_ij||_2^p
    theta <- theta - eta * grad l                          # plain SGD, one step per forget batch

f gives logits, sg is stop-gradient, p = 1 in the authors' code (``lipschitz.py``), the denominator is
the perturbation actually applied (after clipping), and the batch is summed, so the working learning
rate scales like 1/B. Every one of these choices is an argument whose default is the code's behaviour.

Implementation notes:
- The N perturbed forwards are computed *outside* the differentiated function (their outputs are
  constants under stop-gradient), so the backward pass covers only the B clean images. Within the
  noise axis they are vectorised: ``jax.lax.map(..., batch_size=k)`` vmaps k draws at a time and loops
  over chunks, with k chosen so that one forward holds about ``images_per_forward`` images. The
  default, ``"auto"``, is 32 on the CPU (a single forward of all B*N images is 1.5-2x slower than
  chunks of 8-32 images there: the activations overflow the cache) and up to 1024 on accelerators
  (where one large forward is faster).
- The norms are safe: where a perturbed output equals the clean one (a collapsed model) the term and
  its gradient are 0, not NaN; a zero perturbation (sigma=0, or a constant batch clipped to itself)
  contributes 0.
- The forget set is cut into batches of ``min(batch_size, |D_f|)``; the last batch is padded and
  masked, so one compiled step serves the whole pass.
- Many devices: ``jit_unlearn(..., mesh=data_mesh())`` shards each forget batch over the mesh's
  data axis and replicates the parameters; XLA inserts the reductions (the batch sum, the clipping
  range, the gradient). The code of the step is the same on one device and on many, and on many
  processes (``jax.distributed``, docs/distributed.md).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jit_jax import prng
from jit_jax.functional import functionalize, rebuild
from jit_jax.parallel import data_shardings, host_local, is_multiprocess, replicate, shard_batch

ApplyFn = Callable[..., jax.Array]


# ------------------------------------------------------------------------------------------------
# The loss, as pure functions
# ------------------------------------------------------------------------------------------------
def _safe_norm(v: jax.Array, axis: int = -1) -> jax.Array:
    """L2 norm whose gradient at 0 is 0 (``jnp.linalg.norm`` gives NaN there)."""
    sq = jnp.sum(jnp.square(v), axis=axis)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def perturb(key: jax.Array, x: jax.Array, sigma: float | jax.Array, *, clip: bool = True,
            mask: jax.Array | None = None) -> jax.Array:
    """One noise draw ``clip(x + sigma * eps, min(x), max(x))`` over the (masked) batch's range.

    ``sigma`` is a scalar or one value per sample (shape (B,): the data-derived noise scale,
    :func:`jit_jax.unlearn.auto.chosen_settings`)."""
    sigma = jnp.asarray(sigma, x.dtype)
    if sigma.ndim == 1:
        sigma = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    xt = x + sigma * prng.normal(key, x.shape, x.dtype)
    if clip:
        if mask is None:
            lo, hi = jnp.min(x), jnp.max(x)
        else:
            m = mask.reshape((-1,) + (1,) * (x.ndim - 1)).astype(bool)
            lo = jnp.min(jnp.where(m, x, jnp.inf))
            hi = jnp.max(jnp.where(m, x, -jnp.inf))
        xt = jnp.clip(xt, lo, hi)
    return xt


#: ``images_per_forward="auto"`` by backend: chunks of ~32 images on the CPU, where one forward of
#: all B*N images is 1.5-2x slower (the activations overflow the cache); up to 1024 images per
#: forward on accelerators, where one large forward was 1.3-2.2x faster for the CNNs on an H200
#: (docs/performance.md) and the cap bounds the activation memory of large inputs (ViT at 224x224).
AUTO_IMAGES_PER_FORWARD: dict[str, int] = {"cpu": 32}
AUTO_IMAGES_PER_FORWARD_ACCELERATOR = 1024


def resolve_images_per_forward(value: int | None | str, backend: str | None = None
                               ) -> int | None:
    """``"auto"`` -> the backend's default (:data:`AUTO_IMAGES_PER_FORWARD`; ``backend`` defaults
    to ``jax.default_backend()``); ints and None pass through."""
    if value == "auto":
        backend = backend or jax.default_backend()
        return AUTO_IMAGES_PER_FORWARD.get(backend, AUTO_IMAGES_PER_FORWARD_ACCELERATOR)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"images_per_forward={value!r}; accepted: 'auto', None or an integer >= 1")
    return int(value)


def _valid_images_per_forward(value) -> bool:
    try:
        resolve_images_per_forward(value, "cpu")
    except ValueError:
        return False
    return True


def draws_per_forward(batch: int, num_samples: int, images_per_forward: int | None) -> int:
    """How many noise draws to vmap in one forward so that it holds ~images_per_forward images."""
    if images_per_forward is None:
        return num_samples
    return int(min(num_samples, max(1, images_per_forward // max(batch, 1))))


def perturbed_outputs(apply_fn: ApplyFn, params: Any, x: jax.Array, key: jax.Array, *,
                      sigma: float, num_samples: int, clip: bool = True,
                      images_per_forward: int | None | str = "auto", mask: jax.Array | None = None,
                      forward_keys: bool = False) -> tuple[jax.Array, jax.Array]:
    """The N perturbed forwards: returns ``(f(x~) of shape (N, B, C), ||x - x~|| of shape (N, B))``.

    Draws are vmapped within chunks and mapped across chunks (see the module docstring). With
    ``forward_keys`` each forward also gets its own key (``apply_fn(params, x, key)``: dropout masks).
    """
    keys = jax.random.split(key, num_samples)

    def one(k):
        k_noise, k_fwd = jax.random.split(k)
        xt = perturb(k_noise, x, sigma, clip=clip, mask=mask)
        out = apply_fn(params, xt, k_fwd) if forward_keys else apply_fn(params, xt)
        return out, _safe_norm(_flat(x - xt))

    k = draws_per_forward(x.shape[0], num_samples, resolve_images_per_forward(images_per_forward))
    if k >= num_samples:
        return jax.vmap(one)(keys)
    return jax.lax.map(one, keys, batch_size=k)


def loss_from_outputs(out: jax.Array, out_tilde: jax.Array, dx_norm: jax.Array, *, p: int = 1,
                      reduction: str = "sum", mask: jax.Array | None = None) -> jax.Array:
    """``(1/N) sum_j red_i ||out_i - out~_ji||^p / ||dx_ji||^p`` with safe norms.

    ``out`` (B, C) clean logits, ``out_tilde`` (N, B, C), ``dx_norm`` (N, B). ``reduction`` is "sum"
    (the authors' code) or "mean" over the (unmasked) batch.
    """
    num = _safe_norm(out[None] - out_tilde)  # (N, B)
    if p == 1:
        ratio = num / jnp.where(dx_norm > 0, dx_norm, 1.0)
    elif p == 2:
        ratio = jnp.square(num) / jnp.where(dx_norm > 0, jnp.square(dx_norm), 1.0)
    else:
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    return reduce_draws(jnp.where(dx_norm > 0, ratio, 0.0), mask, reduction)


def reduce_draws(per_sample: jax.Array, mask: jax.Array | None, reduction: str) -> jax.Array:
    """(N, B) values per draw and sample -> the loss: the (masked) sum over the batch, or its mean
    over the unmasked samples (``reduction="mean"``), averaged over the N draws."""
    if mask is not None:
        per_sample = per_sample * mask[None].astype(per_sample.dtype)
    per_draw = jnp.sum(per_sample, axis=1)  # (N,)
    if reduction == "mean":
        count = per_sample.shape[1] if mask is None else jnp.maximum(jnp.sum(mask), 1)
        per_draw = per_draw / count
    elif reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return jnp.mean(per_draw)


def jit_loss(apply_fn: ApplyFn, params: Any, x: jax.Array, key: jax.Array, *, sigma: float,
             num_samples: int = 25, p: int = 1, stop_gradient: bool = True, clip: bool = True,
             reduction: str = "sum", images_per_forward: int | None | str = "auto",
             mask: jax.Array | None = None, forward_keys: bool = False) -> jax.Array:
    """The JiT loss of a forget batch ``x`` (normalised inputs, batch first).

    ``apply_fn(params, x) -> logits`` (or ``apply_fn(params, x, key)`` with ``forward_keys``). With
    ``stop_gradient`` (the default, as the authors' ``torch.no_grad()``), the perturbed outputs are
    constants and the gradient flows only through the clean forward; for speed inside an update step
    prefer :func:`jit_value_and_grad`, which computes them before differentiating.
    """
    k_pert, k_clean = jax.random.split(key)
    pert_params = jax.lax.stop_gradient(params) if stop_gradient else params
    out_t, dx = perturbed_outputs(apply_fn, pert_params, x, k_pert, sigma=sigma,
                                  num_samples=num_samples, clip=clip,
                                  images_per_forward=images_per_forward, mask=mask,
                                  forward_keys=forward_keys)
    if stop_gradient:
        out_t = jax.lax.stop_gradient(out_t)
    out = apply_fn(params, x, k_clean) if forward_keys else apply_fn(params, x)
    return loss_from_outputs(out, out_t, dx, p=p, reduction=reduction, mask=mask)


def jit_value_and_grad(apply_fn: ApplyFn, params: Any, x: jax.Array, key: jax.Array, *,
                       sigma: float, num_samples: int = 25, p: int = 1,
                       stop_gradient: bool = True, clip: bool = True, reduction: str = "sum",
                       images_per_forward: int | None | str = "auto", mask: jax.Array | None = None,
                       forward_keys: bool = False) -> tuple[jax.Array, Any]:
    """Loss and gradient of :func:`jit_loss`, with the perturbed forwards outside the derivative.

    Same value and gradient as ``jax.value_and_grad(jit_loss)`` (same key, same draws); with
    ``stop_gradient`` the backward pass only sees the B clean images.
    """
    opts = dict(sigma=sigma, num_samples=num_samples, p=p, clip=clip, reduction=reduction,
                images_per_forward=images_per_forward, mask=mask, forward_keys=forward_keys)
    if not stop_gradient:
        return jax.value_and_grad(
            lambda prm: jit_loss(apply_fn, prm, x, key, stop_gradient=False, **opts))(params)
    k_pert, k_clean = jax.random.split(key)
    out_t, dx = perturbed_outputs(apply_fn, params, x, k_pert, sigma=sigma,
                                  num_samples=num_samples, clip=clip,
                                  images_per_forward=images_per_forward, mask=mask,
                                  forward_keys=forward_keys)

    def clean_loss(prm):
        out = apply_fn(prm, x, k_clean) if forward_keys else apply_fn(prm, x)
        return loss_from_outputs(out, out_t, dx, p=p, reduction=reduction, mask=mask)

    return jax.value_and_grad(clean_loss)(params)


# ------------------------------------------------------------------------------------------------
# Configuration and presets
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class JiTConfig:
    """JiT's hyperparameters. The defaults reproduce the authors' ``lipschitz.py`` where it is
    unambiguous (N=25, p=1, stop-gradient, clipping, batch sum, plain SGD, one pass); sigma, lr
    (eta) and the batch size are per task and model: see :data:`PRESETS`."""

    sigma: float = 0.5
    lr: float = 3e-4
    batch_size: int = 128
    num_samples: int = 25
    p: int = 1
    stop_gradient: bool = True
    clip: bool = True
    reduction: str = "sum"
    passes: int = 1
    train_mode: bool = False  # forward in train mode (BatchNorm batch stats, dropout on)
    reference_quirks: bool = False  # authors' code: gradients never zeroed + train-mode forward
    images_per_forward: int | None | str = "auto"  # "auto": 32 on CPU, up to 1024 on accelerators
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.sigma >= 0 and math.isfinite(self.sigma), "sigma", "a finite number >= 0"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "a finite number > 0"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.num_samples >= 1, "num_samples", "an integer >= 1"),
            (self.p in (1, 2), "p", "1 or 2"),
            (self.reduction in ("sum", "mean"), "reduction", "'sum' or 'mean'"),
            (self.passes >= 1, "passes", "an integer >= 1"),
            (_valid_images_per_forward(self.images_per_forward),
             "images_per_forward", "'auto', None or an integer >= 1"),
        ]
        for ok, name, accepted in checks:
            if not ok:
                raise ValueError(f"JiTConfig.{name}={getattr(self, name)!r}; accepted: {accepted}")

    def replace(self, **kw) -> JiTConfig:
        unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown JiT option(s) {sorted(unknown)}; accepted: "
                             f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **kw)


#: (task, model family) -> the authors' settings (original-code.md section 1.4), and the CPU-scale
#: settings chosen for this project (documented in docs/ with the search that picked them).
PRESETS: dict[tuple[str, str], JiTConfig] = {
    ("class", "vit"): JiTConfig(sigma=0.8, lr=1.5, batch_size=128),
    ("class", "vgg11_torchvision"): JiTConfig(sigma=0.5, lr=3e-4, batch_size=128),
    ("subclass", "vit"): JiTConfig(sigma=1.5, lr=0.5, batch_size=64),
    ("subclass", "vgg11_torchvision"): JiTConfig(sigma=0.01, lr=3e-4, batch_size=64),
    ("random", "vit"): JiTConfig(sigma=0.5, lr=0.1, batch_size=128),
    ("random", "vgg11_torchvision"): JiTConfig(sigma=0.01, lr=3e-4, batch_size=128),
}


def preset(task: str, model: str) -> JiTConfig:
    """The preset for ``task`` in {class, subclass, random} and a model name (family match).

    The authors set JiT only for ViT and their VGG; every other model (ResNet18, the VGG variants,
    the small CNNs, the MLP) gets their VGG row *of the same task* (sub-class and random: sigma
    0.01, batch 64 / 128), not the full-class one."""
    tasks = sorted({t for t, _ in PRESETS})
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; accepted: {tasks}")
    fam = "vit" if model.startswith("vit") else "vgg11_torchvision"
    for key in [(task, model), (task, fam)]:
        if key in PRESETS:
            return PRESETS[key]
    raise AssertionError(f"PRESETS has no row for {(task, fam)}")  # every task has both families


# ------------------------------------------------------------------------------------------------
# The unlearning pass
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class JiTLog:
    losses: list[float]
    step_times: list[float]
    compile_time: float
    runtime: float  # wall time of the pass, compile excluded
    num_steps: int
    batch_size: int
    passes_run: int = 1
    pass_info: list = dataclasses.field(default_factory=list)  # the stopping rule's, per pass

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _batches(n: int, b: int) -> list[np.ndarray]:
    return [np.arange(s, min(s + b, n)) for s in range(0, n, b)]


#: ``value_and_grad(apply_fn, params, x, key, *, mask, forward_keys, aux) -> (loss, grads)``: what
#: one step of the update loop minimises on a forget batch (JiT's by default; see
#: ``objectives.py``). ``aux`` holds the batch's rows of the loop's per-sample arrays (labels, the
#: original model's logits, a per-sample sigma) and, for objectives that read D_r, a retain batch.
ValueAndGrad = Callable[..., tuple[jax.Array, Any]]


def make_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, config: JiTConfig,
              forward_keys: bool, accumulate: bool,
              shardings: tuple[Any, Any] | None = None,
              value_and_grad: ValueAndGrad | None = None):
    """A jitted ``step(params, opt_state, acc, x, mask, key, aux=None) -> (params, opt_state, acc,
    loss)`` (``aux``: a dict of the batch's per-sample arrays; the sharded step needs it given).

    ``shardings = (replicated, batch)`` pins the state and key to ``replicated`` and the forget
    batch, its mask and ``aux`` to ``batch`` (data parallelism); None leaves placement to jax.
    ``value_and_grad`` replaces JiT's loss (then ``config`` gives only the loop's settings). JiT's
    own loss reads ``aux["sigma"]`` (one sigma per sample) when it is there.
    """

    def jit_objective(apply_fn, params, x, key, *, mask, forward_keys, aux):
        return jit_value_and_grad(
            apply_fn, params, x, key, sigma=aux.get("sigma", config.sigma),
            num_samples=config.num_samples, p=config.p, stop_gradient=config.stop_gradient,
            clip=config.clip, reduction=config.reduction,
            images_per_forward=config.images_per_forward, mask=mask, forward_keys=forward_keys)

    objective = value_and_grad or jit_objective

    def step(params, opt_state, acc, x, mask, key, aux=None):
        loss, grads = objective(apply_fn, params, x, key, mask=mask, forward_keys=forward_keys,
                                aux={} if aux is None else aux)
        if accumulate:  # torch's never-zeroed .grad: step k applies g_1 + ... + g_k
            acc = jax.tree.map(jnp.add, acc, grads)
            grads = acc
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, acc, loss

    if shardings is None:
        return jax.jit(step, donate_argnums=(0, 1, 2))
    rep, bat = shardings
    return jax.jit(step, donate_argnums=(0, 1, 2),
                   in_shardings=(rep, rep, rep, bat, bat, rep, bat),
                   out_shardings=(rep, rep, rep, rep))


#: ``stop(params, pass_index) -> (stop, info)`` or ``(stop, info, keep)``: called after each pass
#: with the current parameters (the functional state of the model); ``info`` (a dict of floats) is
#: logged per pass. ``keep`` is None or parameters that replace the current ones: when ``stop`` is
#: true, the parameters the loop returns (an undo of the last pass(es): auto's damage test), else
#: the parameters the next pass starts from (an undone trial pass: auto's step search; the
#: optimiser state is left to ``adjust``). The loop donates the current parameters to its next
#: step: a stop function that keeps them, or hands back the same ``keep`` twice, must copy them
StopFn = Callable[[Any, int], tuple[bool, dict] | tuple[bool, dict, Any]]


def jit_unlearn(model: nnx.Module, x_forget: np.ndarray | jax.Array,
                config: JiTConfig | None = None, *,
                optimizer: optax.GradientTransformation | None = None,
                mesh: Mesh | None = None, data_axis: str = "data",
                value_and_grad: ValueAndGrad | None = None,
                aux: dict[str, np.ndarray] | None = None,
                retain: dict[str, np.ndarray] | None = None,
                stop: StopFn | None = None,
                adjust: Callable[[Any, int], Any] | None = None) -> tuple[nnx.Module, JiTLog]:
    """Run JiT on ``x_forget`` (normalised float inputs, NHWC or any batch-first shape).

    This is also the update loop of every zero-shot objective (``objectives.py``): with
    ``value_and_grad`` given, each step minimises that instead of JiT's loss, and ``config``
    supplies only the loop's settings (lr, batch_size, passes, train_mode, seed).

    ``aux``: per-sample arrays aligned with ``x_forget`` (first dimension ``len(x_forget)``: labels,
    the original model's logits, a per-sample sigma); each step's objective gets the rows of its
    batch, padded like the batch. ``retain``: arrays aligned with a retain set (for objectives that
    read D_r, which are then not zero-shot); each step gets ``aux["retain_" + name]``, a batch of
    rows drawn without replacement (seeded by ``config.seed``). ``stop`` (:data:`StopFn`) is asked
    after every pass whether to stop before ``config.passes``, and may hand back earlier
    parameters to return or to continue from; what it reports is logged.
    ``adjust(opt_state, pass) -> opt_state`` is called after every pass that does not stop the
    run: a rule may change the optimiser's hyperparameters between passes (e.g. a step held in
    ``optax.inject_hyperparams``'s state) without a recompilation.

    Returns a new model (the input model is left untouched) and a :class:`JiTLog`. One pass over the
    forget set in order, one optimiser step per batch (``optax.sgd(config.lr)`` unless ``optimizer``
    is given), model in eval mode unless ``config.train_mode`` or ``config.reference_quirks``.
    Runtime excludes compilation, which is timed apart on a throw-away call.

    ``mesh`` (e.g. :func:`jit_jax.parallel.data_mesh`) runs the same step data-parallel: each
    forget batch is split over the mesh axis ``data_axis``, the parameters and optimiser state are
    replicated. The batch is rounded up to a multiple of that axis's size; the padding rows are
    masked out of the loss and the clipping range, as for the last batch. With a batch that is
    already a multiple, the result equals the one-device result up to the order of floating-point
    sums. A mesh over several processes' devices (:func:`jit_jax.parallel.initialize_distributed`)
    needs every process to make the same call; each reads only its devices' rows of each batch and
    gets back a model of process-local copies of the (replicated) result (docs/distributed.md).
    """
    config = config or JiTConfig()
    x_forget = np.asarray(x_forget, np.float32)
    n = x_forget.shape[0]
    if n == 0:
        raise ValueError("the forget set is empty: JiT needs at least one sample")
    if not np.all(np.isfinite(x_forget)):
        raise ValueError("the forget set contains NaN or inf values")
    aux = {k: np.asarray(v) for k, v in (aux or {}).items()}
    for k, v in aux.items():
        if v.shape[:1] != (n,):
            raise ValueError(f"aux[{k!r}] has shape {v.shape}; accepted: first dimension {n} "
                             "(one row per forget sample)")
    retain = {k: np.asarray(v) for k, v in (retain or {}).items()}
    m = {v.shape[0] for v in retain.values()}
    if len(m) > 1 or 0 in m:
        raise ValueError(f"retain arrays have lengths {sorted(m)}; accepted: one length >= 1")
    train_mode = config.train_mode or config.reference_quirks
    fn = functionalize(model, train=train_mode)
    forward_keys = train_mode
    tx = optimizer if optimizer is not None else optax.sgd(config.lr)
    b = min(config.batch_size, n)
    shardings = None
    if mesh is not None:
        shardings = data_shardings(mesh, data_axis)
        nd = mesh.shape[data_axis]
    step = make_step(fn.apply_fn, tx, config, forward_keys, config.reference_quirks, shardings,
                     value_and_grad)

    params = jax.tree.map(jnp.copy, fn.params)
    opt_state = tx.init(params)
    acc = jax.tree.map(jnp.zeros_like, params)
    key = jax.random.key(config.seed)
    batches = _batches(n, b)
    if shardings is not None:
        params, opt_state, acc, key = replicate((params, opt_state, acc, key), shardings[0])
        b = -(-b // nd) * nd  # the batch fed to the step: a multiple of the data axis
    retain_rng = np.random.default_rng(config.seed)
    num_retain = next(iter(m)) if m else 0

    def place(a, rows=None):  # with a mesh, each process reads only its devices' rows
        if shardings is None:
            return jnp.asarray(a if rows is None else a[rows])
        return shard_batch(a, shardings[1], rows)

    def padded(idx):  # host-side padding: no eager device ops inside the timed loop
        pad = b - len(idx)
        idx = np.concatenate([idx, np.full(pad, idx[0])]) if pad else idx
        mask = np.ones((b,), np.float32)
        mask[b - pad:] = 0.0
        extra = {k: place(v, idx) for k, v in aux.items()}
        if retain:
            rows = retain_rng.choice(num_retain, size=b, replace=num_retain < b)
            extra.update({"retain_" + k: place(v, rows) for k, v in retain.items()})
        return place(x_forget, idx), place(mask), extra

    # Compile ahead of time so that the timed pass excludes compilation.
    t0 = time.perf_counter()
    xb, mb, ab = padded(batches[0])
    step = step.lower(params, opt_state, acc, xb, mb, key, ab).compile()
    compile_time = time.perf_counter() - t0

    losses, times, pass_info = [], [], []
    passes_run = 0
    t_start = time.perf_counter()
    for p in range(config.passes):
        for idx in batches:
            ts = time.perf_counter()
            key, sub = jax.random.split(key)
            xb, mb, ab = padded(idx)
            params, opt_state, acc, loss = step(params, opt_state, acc, xb, mb, sub, ab)
            loss = float(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"JiT loss became {loss} at step {len(losses)}: lower lr (now {config.lr})")
            losses.append(loss)
            times.append(time.perf_counter() - ts)
        passes_run = p + 1
        if stop is not None:
            done, info, *keep = stop(params, p)
            pass_info.append({k: float(v) for k, v in info.items()})
            if keep and keep[0] is not None:
                params = keep[0]
            if done:
                break
        if adjust is not None and p + 1 < config.passes:
            opt_state = adjust(opt_state, p)
    jax.block_until_ready(params)
    runtime = time.perf_counter() - t_start
    # The loss of each step is computed before its update, so the last update can still overflow.
    bad = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
           if not bool(jnp.all(jnp.isfinite(leaf)))]
    if bad:
        raise FloatingPointError(
            f"JiT diverged: after step {len(losses) - 1} the parameters {', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''} contain NaN or inf; lower lr (now {config.lr})")
    if shardings is not None and is_multiprocess():  # process-local copies of the replicated result
        params = host_local(params)
    new_model = rebuild(fn, params)
    log = JiTLog(losses=losses, step_times=times, compile_time=compile_time, runtime=runtime,
                 num_steps=len(losses), batch_size=b, passes_run=passes_run, pass_info=pass_info)
    return new_model, log
