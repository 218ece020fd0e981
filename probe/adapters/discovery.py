"""Discovery: find gates and partial-convolution mask updates in layer classes no adapter covers.

One probe forward pass on a small batch runs under a :class:`torch.overrides.TorchFunctionMode`
that follows the data flow: every tensor an operation returns is tagged with a small
:class:`_Node` (its operation, parents, the module calls it happened in and those it is the output
of, where its channels come from, and whether it derives from the image, from the hole, or from
neither). No tensor values are kept, except channel 0 of candidate window counts and of mask-only
{0, 1} tensors (one ``[B, 1, h, w]`` copy each). Two patterns are taken:

* **gate**: a bounded activation (``sigmoid``, ``hardsigmoid`` or one the caller names, as an op
  or a module class) whose output ``[B, C, h, w]`` multiplies another tensor of exactly the same
  shape (per channel and location) that is not the activation's own input (``x * sigmoid(x)`` is
  SiLU, not a gate). The multiplied factor is followed through channel ``torch.cat``, ``split``,
  ``chunk``, ``narrow``, ``[:, a:b]`` and pass-through copies: each channel range that comes from
  an activation is a gate of its own (LBAM's concatenated forward and reverse attention maps), an
  activation reaching several multiplications is one site. The activation's input is the logit.
* **partial-conv mask update**: a convolution of a mask-only tensor (derived from the hole, not
  from the image) with an all-ones kernel (the window count), a mask-only {0, 1} tensor equal to
  ``count > 0`` or ``count == 0`` that is computed from the count (``clamp(count, 0, 1)``,
  ``count > 0``) or is a max-pool of the counted mask (``F.max_pool2d``, before or after the
  count), and
  a multiplication or division of image-derived features by something derived from the count.
  ``count / window`` is the coverage.

Each site is owned by the innermost module whose forward holds both ends of the pattern (the
activation and the multiplication; the count and the mask update) and named (:func:`_named`) by
the owner's path when the owner holds one site; otherwise by the module the site is the output
of (``res.0.conv1`` for a gate chunked from that convolution's output, ``reverse.1`` for maps a
module returns; for a partial convolution written as a function around an ``nn.Conv2d``, always
that convolution), and by the owner's path plus ``:opN`` only where no module made it. Recording
then needs no data flow: :class:`DiscoveredAdapter` hooks the activation module's output where
the activation is a module called once, and otherwise watches, during the owner's forward only,
the N-th call of the operation the probe pass saw (:class:`_OpWatch`). Data-dependent control
flow (a forward that takes other operations on other inputs) and gates inside scripted or compiled
modules are not seen; name an activation (``gate_activations``) or register an adapter for those.
"""
from __future__ import annotations

import bisect
import weakref
from contextlib import contextmanager
from collections import Counter
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..devices import model_device
from ..hooks import UserState, eval_mode, hooks_attached

IMAGE, MASK = 1, 2  # taint bits: derived from the image (or sketch) / from the hole
GATE_OPS = {"sigmoid": "sigmoid", "sigmoid_": "sigmoid", "hardsigmoid": "hardsigmoid", "hardsigmoid_": "hardsigmoid"}
GATE_MODULES = {nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid"}
SIGMOID_LIKE = {"sigmoid"}  # activations whose input is a logit in gateprobe's sense (histograms bin it)
MULTIPLY = {"mul", "mul_", "__mul__", "__rmul__", "__imul__"}
RENORMALISE = MULTIPLY | {"div", "div_", "__truediv__", "__rtruediv__", "__itruediv__"}
PASSTHROUGH = {"clone", "contiguous", "to", "float", "detach", "dropout", "view_as", "type_as"}
CONSTANT = {"ones_like", "zeros_like", "full_like", "empty_like", "new_ones", "new_zeros", "new_full", "new_empty"}
CONV = {"conv2d"}
CAT = {"cat", "concat", "concatenate"}
POOL = {"max_pool2d"}  # a window op whose output can be a partial convolution's new mask
SLICE = {"split", "split_with_sizes", "chunk", "tensor_split", "narrow", "__getitem__"}


def op_name(func) -> str:
    """The name an operation is counted under, the same in the probe pass and while recording."""
    return getattr(func, "__name__", type(func).__name__)


def _tensors(value):
    """The tensors in an argument or result (nested tuples and lists, one level of dict)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default):
    return args[index] if len(args) > index else kwargs.get(name, default)


def _first(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v) if not isinstance(v, str) else 0


def conv_call_geometry(args: tuple, kwargs: dict) -> dict:
    """Kernel, stride, dilation and padding (first spatial axis) of an ``F.conv2d`` call."""
    weight = _arg(args, kwargs, 1, "weight", None)
    padding = _arg(args, kwargs, 4, "padding", 0)
    kernel = int(weight.shape[-2])
    dilation = _first(_arg(args, kwargs, 5, "dilation", 1))
    if padding == "same":
        padding = dilation * (kernel - 1) // 2
    return {"kernel": kernel, "stride": _first(_arg(args, kwargs, 3, "stride", 1)), "dilation": dilation,
            "padding": _first(padding)}


# ----------------------------------------------------------------------------- the probe pass
@dataclass(eq=False)
class _Call:
    """One module call during the probe pass: ops ``[start, end)`` ran inside its forward."""

    module: nn.Module
    path: str
    parent: _Call | None
    start: int
    known: bool  # inside a module that an adapter already covers
    end: int = -1

    def chain(self) -> list[_Call]:
        call, out = self, []
        while call is not None:
            out.append(call)
            call = call.parent
        return out[::-1]


@dataclass(eq=False)
class _Node:
    """What the probe pass knows about one tensor: the operation that made it and its ancestry."""

    seq: int
    name: str
    call: _Call
    parents: tuple
    taint: int
    counts: frozenset = frozenset()  # the candidate window counts this tensor derives from
    shape: tuple = ()
    activation: str | None = None  # set on the outputs of bounded activations
    logit: _Node | None = None
    act_module: _Call | None = None  # the activation module's call, when the activation is a module
    args: tuple = ()  # (args, kwargs) of convolutions, for their geometry
    made: tuple = ()  # the module calls this tensor is the output of, innermost first
    pieces: tuple = ()  # channel provenance, see _pieces


@dataclass
class Candidate:
    """A multiplication that looks like a gate but was not taken, for ``gateprobe layers``."""

    where: str
    reason: str


class _Tracer(TorchFunctionMode):
    """Follows the data flow of one forward pass and collects the sites (see the module docstring)."""

    TAG = "_gateprobe_node"

    def __init__(self, gate_ops: dict, gate_modules: dict):
        super().__init__()
        self.gate_ops, self.gate_modules = gate_ops, gate_modules
        self.seq = 0
        self.by_name: dict[str, list[int]] = {}
        self.call: _Call | None = None
        self.calls: dict[int, int] = {}  # id(module) -> number of calls
        self.tagged: list = []
        self.counts: dict[int, dict] = {}  # seq of a count node -> its facts
        self.binary: list[tuple[_Node, Tensor]] = []  # mask-only {0, 1} tensors: (node, channel 0 [B, 1, h, w])
        self.gates: list[dict] = []
        self.candidates: list[Candidate] = []

    # tagging ----------------------------------------------------------------
    def node(self, t) -> _Node | None:
        return getattr(t, self.TAG, None) if isinstance(t, Tensor) else None

    def tag(self, t: Tensor, node: _Node) -> None:
        setattr(t, self.TAG, node)
        self.tagged.append(weakref.ref(t))

    def source(self, t: Tensor, taint: int) -> Tensor:
        t = t.clone()
        self.tag(t, _Node(-1, "input", self.call, (), taint, shape=tuple(t.shape)))
        return t

    def untag(self) -> None:
        for ref in self.tagged:
            t = ref()
            if t is not None and hasattr(t, self.TAG):
                delattr(t, self.TAG)

    # module calls -------------------------------------------------------------
    def enter(self, module: nn.Module, path: str, known: bool) -> None:
        parent = self.call
        self.call = _Call(module, path, parent, self.seq, known or (parent is not None and parent.known))
        self.calls[id(module)] = self.calls.get(id(module), 0) + 1

    def leave(self, inputs: tuple, output) -> None:
        call, self.call = self.call, self.call.parent
        call.end = self.seq
        for node in {id(n): n for n in map(self.node, _tensors(output)) if n is not None}.values():
            node.made += (call,)
        kind = self.gate_modules.get(type(call.module)) or self.gate_modules.get(type(call.module).__name__)
        out, x = (output if isinstance(output, Tensor) else None), (inputs[0] if inputs else None)
        if kind and out is not None and self.node(out) is not None and self.node(x) is not None and not call.known:
            node = self.node(out)
            node.activation, node.logit, node.act_module = kind, self.node(x), call
            node.call = self.call  # the activation happened where the module was called

    # operations ---------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = op_name(func)
        outputs = list(_tensors(out))
        if not outputs:
            return out
        seq = self.seq
        self.seq += 1
        self.by_name.setdefault(name, []).append(seq)
        inputs = [] if name in CONSTANT else [t for t in _tensors((args, kwargs)) if self.node(t) is not None]
        parents = tuple(map(self.node, inputs))
        taint = 0
        counts: frozenset = frozenset()
        for p in parents:
            taint |= p.taint
            counts |= p.counts
        node = _Node(seq, name, self.call, parents, taint, counts, tuple(outputs[0].shape))
        if not (self.call is not None and self.call.known):
            self.inspect(node, name, args, kwargs, outputs[0])
        for i, t in enumerate(outputs):
            each = node if i == 0 else replace(node, shape=tuple(t.shape))  # split, chunk: one node per piece
            each.pieces = _pieces(name, args, kwargs, t, inputs, self.node)
            self.tag(t, each)
        return out

    def inspect(self, node: _Node, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """Take ``node`` as an activation, a window count, a binarised mask or a gating multiplication."""
        parents = node.parents
        if name in self.gate_ops and parents:
            node.activation, node.logit = self.gate_ops[name], parents[0]
        elif name in CONV:
            node.args = (args, kwargs)
            weight = _arg(args, kwargs, 1, "weight", None)
            x = self.node(args[0])
            if x is not None and x.taint == MASK and weight is not None and bool((weight == 1).all()):
                count = {"node": node, "input": x, "value": out[:, :1].detach().clone(),
                         "window": float(weight[0].numel()), "valid_polarity": bool(args[0].float().mean() > 0.5),
                         "geometry": conv_call_geometry(args, kwargs)}
                self.counts[node.seq] = count
                node.counts = node.counts | {node.seq}
                for earlier, value in reversed(self.binary):  # a new mask computed before the count
                    if self.binarisation(count, earlier, value):
                        break
        if name in RENORMALISE and len(parents) == 2:
            self.renormalised(parents, out)
        if name in MULTIPLY and len(parents) == 2:
            self.gating(node, parents, [t for t in _tensors(args) if self.node(t) is not None][:2])
        if node.taint == MASK and name not in CONV and out.dim() == 4:
            value = out[:, :1].float()
            if bool(((value == 0) | (value == 1)).all()):
                self.binary.append((node, value))
                for count in self.counts.values():
                    if "binarise" not in count:
                        self.binarisation(count, node, value)

    def binarisation(self, count: dict, node: _Node, value: Tensor) -> bool:
        """Take ``node`` (its channel 0 ``value``, in {0, 1}) as ``count``'s mask update when it is
        computed from the count (within two operations) or is a max-pool of the counted mask, and
        equals ``count > 0`` (a valid mask) or ``count == 0`` (a hole mask)."""
        counted = count["value"]
        if value.shape != counted.shape or not (_reaches(node, count["node"], 2) or (
                node.name in POOL and _reaches(node, count["input"]))):
            return False
        for polarity, expected in (("valid", counted > 0), ("hole", counted == 0)):
            if torch.equal(value, expected.float()):
                count["binarise"], count["polarity"] = node, polarity
                return True
        return False

    def renormalised(self, parents: tuple, out: Tensor) -> None:
        a, b = parents
        for feature, mask in ((a, b), (b, a)):
            if feature.taint & IMAGE and mask.counts and out.dim() == 4:
                for seq in mask.counts:
                    self.counts[seq].setdefault("channels", int(out.shape[1]))
                    self.counts[seq].setdefault("feature", feature)

    def gating(self, node: _Node, parents: tuple, operands: list) -> None:
        for (gate, other), value in zip((parents, parents[::-1]), operands):
            acts = _activations(gate)
            if not acts:
                if len(gate.shape) == 4 and gate.shape == other.shape and other.taint & IMAGE and gate.parents \
                        and bool(value.min() >= 0) and bool(value.max() <= 1.5):
                    self.note_bounded(gate, node)
                continue
            where, kind = (node.call.path if node.call else ""), acts[0][0].activation
            if gate.shape != other.shape or len(gate.shape) != 4:
                self.candidates.append(Candidate(where, f"{kind} output {list(gate.shape)} multiplies "
                                                        f"{list(other.shape)}: not one gate per channel and location"))
            elif any(_reaches(act.logit, other) for act, _, _ in acts):
                self.candidates.append(Candidate(where, f"x * {kind}(x): a SiLU-like activation, not a gate"))
            else:
                self.gates += [{"act": act, "lo": lo, "hi": hi, "mul": node} for act, lo, hi in acts]
            return

    def note_bounded(self, gate: _Node, mul: _Node) -> None:
        """A bounded same-shape factor (values in [0, 1.5]) made by a leaf module that is not a
        known activation: say how to take it."""
        made_by = gate.call
        if made_by is None or made_by.module is None or gate.call is mul.call:
            return
        module = made_by.module
        if len(list(module.children())) == 0 and gate.taint and made_by.path:
            self.candidates.append(Candidate(made_by.path, f"{type(module).__name__} output multiplies features of "
                                             f"the same shape; if it is a gate, name it: --gate-activation "
                                             f"{type(module).__name__}"))


def _channel_offset(view: Tensor, base: Tensor) -> int | None:
    """The first channel of ``base`` (``[B, C, h, w]``) that ``view`` is a channel range of
    (a split, chunk, narrow or ``[:, a:b]`` of it), or None."""
    if base.dim() != 4 or view.shape[0] != base.shape[0] or view.shape[2:] != base.shape[2:] \
            or view.stride() != base.stride() or base.stride(1) == 0 \
            or view.untyped_storage().data_ptr() != base.untyped_storage().data_ptr():
        return None
    start, rest = divmod(view.storage_offset() - base.storage_offset(), base.stride(1))
    return start if rest == 0 and 0 <= start and start + view.shape[1] <= base.shape[1] else None


def _pieces(name: str, args: tuple, kwargs: dict, out: Tensor, inputs: list, node_of) -> tuple:
    """Where the channels of ``out`` (``[B, C, h, w]``) come from, as ``(start, stop, source node,
    first source channel)``: the inputs of a channel ``cat``, the tensor a channel slice or a
    pass-through copy was taken of; empty for every other operation."""
    if out.dim() != 4:
        return ()
    if name in CAT:
        dim = _arg(args, kwargs, 1, "dim", 0)
        if not isinstance(dim, int) or dim % 4 != 1:
            return ()
        pieces, start = [], 0
        for x in _arg(args, kwargs, 0, "tensors", ()):
            if node_of(x) is not None:
                pieces.append((start, start + x.shape[1], node_of(x), 0))
            start += x.shape[1]
        return tuple(pieces)
    if not inputs:
        return ()
    if name in PASSTHROUGH and inputs[0].shape == out.shape:
        return ((0, out.shape[1], node_of(inputs[0]), 0),)
    start = _channel_offset(out, inputs[0]) if name in SLICE else None
    return () if start is None else ((0, out.shape[1], node_of(inputs[0]), start),)


def _activations(node: _Node, lo: int = 0, hi: int | None = None, depth: int = 8) -> list[tuple[_Node, int, int]]:
    """The bounded activations that channels ``[lo, hi)`` of ``node`` are (followed through
    channel ``cat``, slices and pass-through copies), as ``(activation node, first channel, end)``
    ranges of the activation's output; adjacent ranges of one activation are merged."""
    hi = (node.shape[1] if len(node.shape) > 1 else 0) if hi is None else hi
    if node.activation is not None:
        return [(node, lo, hi)]
    found = []
    for start, stop, source, first in node.pieces if depth else ():
        a, b = max(lo, start), min(hi, stop)
        if a < b:
            found += _activations(source, a - start + first, b - start + first, depth - 1)
    merged: list = []
    for act, a, b in found:
        if merged and merged[-1][0] is act and merged[-1][2] == a:
            merged[-1] = (act, merged[-1][1], b)
        else:
            merged.append((act, a, b))
    return merged


def _reaches(start: _Node | None, target: _Node, depth: int = 4) -> bool:
    """Whether ``target`` is ``start`` or one of its first ``depth`` generations of ancestors."""
    frontier = [start] if start is not None else []
    for _ in range(depth + 1):
        if any(n is target for n in frontier):
            return True
        frontier = [p for n in frontier for p in n.parents]
    return False


def _producing_conv(node: _Node, depth: int = 8) -> _Node | None:
    """The convolution a logit comes from, through splits, slices and element-wise ops."""
    for _ in range(depth):
        if node.name in CONV:
            return node
        if not node.parents:
            return None
        node = node.parents[0]
    return None


def _owner(*calls: _Call) -> _Call:
    """The innermost module call that holds all of ``calls``."""
    chains = [c.chain() for c in calls]
    owner = chains[0][0]
    for level in zip(*chains):
        if any(c is not level[0] for c in level):
            break
        owner = level[0]
    return owner


def _inside(call: _Call, owner: _Call) -> bool:
    """Whether ``call`` ran inside ``owner``'s forward (and is not ``owner``)."""
    call = call.parent
    while call is not None and call is not owner:
        call = call.parent
    return call is owner


def _made_inside(node: _Node, owner: _Call, skip: _Call | None = None) -> str | None:
    """The path of the outermost module inside ``owner`` (not covered by an adapter, not ``skip``)
    whose output ``node`` is, or None."""
    made = [c for c in node.made if c is not skip and not c.known and _inside(c, owner)]
    return made[-1].path if made else None


def _gate_maker(act: _Node, owner: _Call, depth: int = 8) -> str | None:
    """The module a gate is the output of: the outermost module inside ``owner`` that returned it
    (other than the bare activation module), else the one its logit is a channel range of."""
    maker, node = _made_inside(act, owner, skip=act.act_module), act.logit
    while maker is None and node is not None and depth:
        maker = _made_inside(node, owner)
        node = node.pieces[0][2] if len(node.pieces) == 1 else None
        depth -= 1
    return maker


def _feature_maker(feature: _Node, owner: _Call, depth: int = 4) -> str | None:
    """The module inside ``owner`` whose output a partial convolution renormalises: the first
    module output among ``feature``'s image-derived ancestors, not searched past a convolution."""
    frontier = [feature]
    for _ in range(depth):
        for node in frontier:
            maker = _made_inside(node, owner)
            if maker is not None:
                return maker
        frontier = [p for n in frontier if n.name not in CONV for p in n.parents if p.taint & IMAGE]
    return None


# ----------------------------------------------------------------------------- recording
_SUSPENDED = [0]  # > 0 while gateprobe's own code runs inside a watched forward (its ops are not counted)


@contextmanager
def _suspended():
    _SUSPENDED[0] += 1
    try:
        yield
    finally:
        _SUSPENDED[0] -= 1


class _OpWatch(TorchFunctionMode):
    """Active during one forward of a site's owner: counts the calls of each watched operation and
    hands the ``index``-th call of ``name`` (its args and result) to ``targets[(name, index)]``,
    which may return a replacement result (ablation)."""

    def __init__(self, targets: dict):
        super().__init__()
        self.targets, self.seen = targets, {}
        self.names = {name for name, _ in targets}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if _SUSPENDED[0]:
            return out
        name = op_name(func)
        if name in self.names:
            index = self.seen.get(name, 0)
            self.seen[name] = index + 1
            handler = self.targets.get((name, index))
            if handler is not None:
                with _suspended():
                    replaced = handler(args, out)
                out = out if replaced is None else replaced
        return out


def _watch(module: nn.Module, make_targets) -> list:
    """Hooks that run an :class:`_OpWatch` over every forward of ``module``: ``make_targets()`` gives
    a fresh ``{(name, index): handler}`` per call. The mode is left also when the forward raises."""
    modes: list = []

    def enter(_m, _args):
        mode = _OpWatch(make_targets())
        mode.__enter__()
        modes.append(mode)

    def leave(_m, _args, _out):
        if modes:
            modes.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]


class DiscoveredAdapter:
    """Records one discovered site of its owner module (see the module docstring).

    Gates: ``act_path`` (the activation module, relative to the owner) or ``act_op`` (``(name,
    index)`` of the activation call in the owner's forward), and ``channels``: the ``(start,
    stop)`` range of the activation's output that is the gate (None: all of it). Partial sites:
    ``count_op`` and ``binarise_op`` (in either order), the ``polarity`` of the binarised mask
    (``"valid"``: 1 where the count is positive) and the ``window``. Sigmoid gates hand
    ``sink.gated`` their logits; gates of any other activation hand the gate values in both places,
    so that histograms, AUCs and thresholds are taken over the gate itself (``Site.binned`` says
    which)."""

    def __init__(self, kind: str, geometry: dict, *, activation: str = "", act_path: str | None = None,
                 act_op: tuple | None = None, channels: tuple | None = None, count_op: tuple | None = None,
                 binarise_op: tuple | None = None, polarity: str = "valid", pattern: str = ""):
        self.kind, self.geometry_, self.activation, self.pattern = kind, geometry, activation, pattern
        self.act_path, self.act_op, self.channels = act_path, act_op, channels
        self.count_op, self.binarise_op, self.polarity = count_op, binarise_op, polarity

    def geometry(self, module: nn.Module) -> dict:
        return dict(self.geometry_)

    def _emit_gate(self, sink, logits: Tensor, gates: Tensor) -> None:
        with _suspended():
            sink.gated(logits if self.activation in SIGMOID_LIKE else gates, gates)

    def attach(self, module: nn.Module, sink) -> list:
        if self.kind == "gated":
            return self._attach_gate(module, lambda logits, gates: self._emit_gate(sink, logits, gates))
        window = self.geometry_["window"]

        def targets():
            seen: dict = {}

            def emit():
                if len(seen) == 3:
                    new_valid = seen.pop("new").to(seen["valid_in"].dtype)
                    new_valid = new_valid if self.polarity == "valid" else 1 - new_valid
                    sink.partial(seen.pop("valid_in"), new_valid, seen.pop("count") / window)

            def on_count(args, count):
                seen["valid_in"], seen["count"] = args[0], count[:, :1].clone()  # layers may fill it in place
                emit()

            def on_binarised(_args, binarised):
                seen["new"] = binarised[:, :1].clone()
                emit()

            return {self.count_op: on_count, self.binarise_op: on_binarised}

        return _watch(module, targets)

    def _attach_gate(self, module: nn.Module, on_gate) -> list:
        """Hooks calling ``on_gate(logits, gates)`` with the gate's channels; a result replaces them."""
        start, stop = self.channels or (None, None)

        def call(logits: Tensor, gates: Tensor):
            if self.channels is None:
                return on_gate(logits, gates)
            part = on_gate(logits[:, start:stop], gates[:, start:stop])
            return None if part is None else torch.cat([gates[:, :start], part, gates[:, stop:]], 1)

        if self.act_path is not None:
            return [module.get_submodule(self.act_path).register_forward_hook(
                lambda _m, inputs, gates: call(inputs[0], gates))]
        return _watch(module, lambda: {self.act_op: lambda args, gates: call(args[0], gates)})

    def ablate(self, module: nn.Module, channel: int, value: float) -> list:
        if self.kind != "gated":
            raise NotImplementedError("partial-convolution sites have no gate channels to ablate")

        def force(_logits, gates):
            gates = gates.clone()
            gates[:, channel] = value
            return gates

        return self._attach_gate(module, force)


# ----------------------------------------------------------------------------- discovery
@dataclass
class Discovery:
    """What one probe pass found: ``sites`` as ``(path, module, adapter)`` in execution order, and
    the multiplications that looked like gates but were not taken."""

    sites: list = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


def probe_batch(size: int = 64, batch: int = 1, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """A small fixed probe batch on ``device``: noise images ``[B, 3, S, S]`` and a square hole ``[B, 1, S, S]``."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, size, size, generator=gen, device="cpu").to(device)
    hole = torch.zeros(batch, 1, size, size, device=device)
    hole[..., size // 4: size // 2 + size // 8, size // 4: size // 2 + size // 8] = 1
    return image, hole


def discover(model: nn.Module, probe: tuple | None = None, gate_activations=(), known: set | None = None,
             ) -> Discovery:
    """Run one probe forward pass of ``model(image, hole, None)`` (``probe`` = ``(image, hole)``,
    default :func:`probe_batch`) and return the gates and mask updates it found outside the
    modules in ``known`` (ids of modules an adapter already covers). ``gate_activations`` names
    further bounded activations: op names (``tanh``) or module class names (``GaussActivation``)."""
    names = set(gate_activations)
    tracer = _Tracer({**GATE_OPS, **{n: n for n in names}},
                     {**GATE_MODULES, **{n: n for n in names}})
    known = known or set()
    paths = {id(m): p for p, m in model.named_modules()}

    def attach_tracking():
        handles = []
        for module in model.modules():
            path = paths[id(module)]
            handles.append(module.register_forward_pre_hook(
                lambda m, _a, path=path: tracer.enter(m, path, id(m) in known)))
            handles.append(module.register_forward_hook(lambda _m, a, out: tracer.leave(a, out), always_call=True))
        return handles

    image, hole = probe if probe is not None else probe_batch(device=model_device(model))
    try:
        # a model that changes itself in forward gets the state it was handed back (see UserState)
        with UserState(model), hooks_attached(model, [attach_tracking]), eval_mode(model), torch.inference_mode(), \
                tracer:
            model(tracer.source(image, IMAGE), tracer.source(hole, MASK), None)
    finally:
        tracer.untag()
    return Discovery(_sites(tracer), tracer.candidates)


def _index(tracer: _Tracer, node: _Node, owner: _Call) -> tuple[str, int]:
    """``(name, index)``: ``node`` is the index-th call of its operation in ``owner``'s forward."""
    seqs = tracer.by_name[node.name]
    return node.name, bisect.bisect_left(seqs, node.seq) - bisect.bisect_left(seqs, owner.start)


@dataclass
class _Found:
    """A site before it is named: where it ran, who holds it, and the module it is the output of."""

    seq: int
    owner: _Call
    maker: str | None
    adapter: DiscoveredAdapter
    functional: bool = False  # a partial convolution written as a function around the maker


def _gate_sites(tracer: _Tracer) -> list[_Found]:
    """One site per activation channel range that reaches a multiplication (the first one it reaches
    decides the owner), and per (owner module, hook target): a module called twice is one site."""
    found, seen = [], set()
    for gate in tracer.gates:
        act, mul, lo, hi = gate["act"], gate["mul"], gate["lo"], gate["hi"]
        owner = _owner(act.call, mul.call)
        once = act.act_module is not None and tracer.calls[id(act.act_module.module)] == 1
        if once:
            path = act.act_module.path[len(owner.path) + 1:] if owner.path else act.act_module.path
            target, style = ("module", path), f"{type(act.act_module.module).__name__} module"
        else:
            target, style = ("op", _index(tracer, act, owner)), f"{act.name} op"
        keys = {("act", act.seq, lo, hi), (id(owner.module), target, lo, hi)}
        if keys & seen:
            continue
        seen |= keys
        conv = _producing_conv(act.logit)
        channels = None if (lo, hi) == (0, act.shape[1]) else (lo, hi)
        part = f" channels {lo}:{hi}" if channels else ""
        adapter = DiscoveredAdapter("gated", {"channels": hi - lo, **(conv_call_geometry(*conv.args) if conv else {})},
                                    activation=act.activation, pattern=f"{act.activation} gate ({style}){part} x features",
                                    act_path=target[1] if once else None, act_op=None if once else target[1],
                                    channels=channels)
        found.append(_Found(act.seq, owner, _gate_maker(act, owner), adapter))
    return found


def _partial_sites(tracer: _Tracer) -> list[_Found]:
    """One site per window count of a valid mask that is binarised and renormalises features."""
    found, seen = [], set()
    for count in tracer.counts.values():
        binarise = count.get("binarise")
        if binarise is None or "channels" not in count or not count["valid_polarity"]:
            continue
        node = count["node"]
        owner = _owner(node.call, binarise.call)
        ops = (_index(tracer, node, owner), _index(tracer, binarise, owner))
        if (id(owner.module), ops) in seen:
            continue
        seen.add((id(owner.module), ops))
        geometry = {"channels": count["channels"], **count["geometry"], "window": count["window"]}
        adapter = DiscoveredAdapter("partial", geometry, count_op=ops[0], binarise_op=ops[1],
                                    polarity=count["polarity"],
                                    pattern=f"ones-kernel count ({ops[0][0]}) -> {ops[1][0]} mask update")
        maker = _feature_maker(count["feature"], owner)
        found.append(_Found(min(node.seq, binarise.seq), owner, maker, adapter,
                            functional=maker is not None and node.call is owner))
    return found


def _named(found: list[_Found]) -> list[tuple[str, _Found]]:
    """Names in execution order: the owner's path when it holds one site (the model's own layer
    class), else the path of the module the site is the output of (for a partial convolution
    written as a function, always its convolution's), else the owner's path plus ``:opN``; a name
    that several sites would share is numbered ``:opN`` in execution order."""
    found = sorted(found, key=lambda f: f.seq)
    per_owner = Counter(id(f.owner.module) for f in found)
    bases = []
    for f in found:
        alone = per_owner[id(f.owner.module)] == 1
        if alone and f.owner.path and not f.functional:
            bases.append((f.owner.path, False))
        elif f.maker is not None:
            bases.append((f.maker, False))
        else:
            bases.append((f.owner.path or "model", not alone))
    shared, numbered, names = Counter(base for base, _ in bases), Counter(), []
    for (base, numbers), f in zip(bases, found):
        if numbers or shared[base] > 1:
            names.append((f"{base}:op{numbered[base]}", f))
            numbered[base] += 1
        else:
            names.append((base, f))
    return names


def _sites(tracer: _Tracer) -> list:
    return [(name, f.owner.module, f.adapter) for name, f in _named(_gate_sites(tracer) + _partial_sites(tracer))]


__all__ = ["Candidate", "DiscoveredAdapter", "Discovery", "discover", "op_name", "probe_batch"]
