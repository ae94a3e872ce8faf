"""The speed-ups' implementation over NNCF 3.4's private API (listed in
`speedups.PRIVATE_SYMBOLS`). Imported only through `detcompress.compression.speedups`, which
checks the installed NNCF first."""

from __future__ import annotations

import itertools
import os
import types
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from nncf.torch.function_hook import hook_executor_mode
from nncf.torch.function_hook.wrapper import ForwardWithHooks, get_hook_storage
from torch.overrides import TorchFunctionMode


def use_fused_cpu_kernels() -> bool:
    """Make NNCF's fake quantizers run detcompress's fused CPU kernels (cpu_fake_quantize): same
    forward bit for bit, the backward in one pass instead of ~25 ATen operations. NNCF's own
    kernels stay for CUDA, with `DETCOMPRESS_NNCF_KERNELS=nncf`, and where the fused ones cannot
    be built or loaded (no C compiler, no writable cache). CPU cases the fused kernels do not
    cover (half precision, float64, a range varying along two axes) run NNCF's torch reference
    functions. Idempotent; returns whether the fused kernels are in use."""
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import ReferenceQuantizedFunctions

    from detcompress.compression import cpu_fake_quantize

    namespace = extensions.QuantizedFunctionsCPU
    if isinstance(namespace._loaded_namespace, cpu_fake_quantize.FusedQuantizedFunctions):
        return True
    if os.environ.get("DETCOMPRESS_NNCF_KERNELS", "fused") == "nncf":
        return False
    # What the fused kernels do not cover goes to NNCF's torch reference functions, which need no
    # compilation (NNCF's own C++ extension takes ~45 s to build on first use).
    kernels = cpu_fake_quantize.build_kernels(fallback=ReferenceQuantizedFunctions)
    if kernels is None:
        return False
    # ExtensionNamespace loads lazily into `_loaded_namespace`; filling it first is how NNCF
    # itself swaps in its reference functions when compilation fails.
    namespace._loaded_namespace = kernels
    return True


def fused_symmetric_forward(kernels: Any) -> Callable[..., Any]:
    """A SymmetricQuantizer forward that hands the whole computation to the fused kernels
    (cpu_fake_quantize.symmetric_fake_quantize): NNCF's forward reads its state through
    `.item()` properties, moves the module to the input's device and builds the range with
    autograd-tracked tensor operations on every call, ~0.8 ms of Python per quantizer and
    iteration on the demo. Same state read, same arithmetic, same gradients; anything else
    (NNCF debug call counting, tracing for export, log-scale storage, inputs the kernels do not
    cover) runs NNCF's own forward."""
    from nncf.common.utils.debug import is_debug
    from nncf.torch.utils import is_tracing_state

    def forward(self: Any, x: Any) -> Any:
        if (
            type(x) in (torch.Tensor, torch.nn.Parameter)  # no subclass with its own dispatch
            and x.device.type == "cpu"  # else the .item() reads below would sync a GPU
            and x.dtype == torch.float32
            and not self._is_using_log_scale_storage
            and not is_debug()
            and not is_tracing_state()
        ):
            with torch._C.DisableTorchFunction():
                if self.enabled.item() != 1:  # NNCF reads enabled[0]: one element
                    return x
                out = kernels.symmetric_fake_quantize(
                    x, self._scale_param_storage, self.eps, self._level_low.item(),
                    self._level_high.item(),
                )  # fmt: skip
            if out is not None:
                return out
        return type(self).forward(self, x)

    return forward


def _structure(model: torch.nn.Module, storage: Any) -> tuple[Any, ...]:
    """What a _TrainingPlan depends on: the modules (hook modules included), their parameter
    objects and the hook keys (~0.2 ms to collect on the demo, against ~8 ms for NNCF's
    tables)."""
    parts: list[int] = []
    stack: list[torch.nn.Module | None] = [model]
    while stack:  # what model.modules() would give, without its generators (~3x faster)
        module = stack.pop()
        if module is not None:
            parts += (id(module), *map(id, module._parameters.values()), 0)
            stack += module._modules.values()
    return tuple(parts), tuple(storage.pre_hooks.keys()), tuple(storage.post_hooks.keys())


class _TrainingPlan:
    """What NNCF's FunctionHookMode recomputes at every forward (parameter names, hook names,
    shared-weight counts: ~8 ms per forward on the demo), computed once while the model's
    structure stays the same, and the names of the operations that have hooks."""

    def __init__(self, model: torch.nn.Module) -> None:
        storage = get_hook_storage(model)
        self.structure = _structure(model, storage)
        nncf_mode = hook_executor_mode.FunctionHookMode(model, storage)
        self.const_name_map = nncf_mode.const_name_map
        self.group_names = nncf_mode.hooks_module_to_group_name
        self.shared_weights = nncf_mode.counter_reusing_shared_weights
        self.modules = [module for _, module in model.named_modules()]
        self.child_names: dict[int, dict[int, str]] = {}
        # HookStorage keys are "<operation name with '.' as ':'>__<port>".
        keys = itertools.chain(storage.pre_hooks.keys(), storage.post_hooks.keys())
        self.hooked_operations = frozenset(key.rsplit("__", 1)[0] for key in keys)
        # Per kind of forward (see _TrainingForward): its hooks at module boundaries, or None
        # where the hook mode must stay.
        self.module_hooks: dict[tuple[Any, ...], list[_ModuleHooks] | None] = {}


def _has_parameter(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether NNCF's process_parameters would look at any argument (it looks at parameters and
    at lists of them)."""
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, torch.nn.Parameter):
            return True
        if isinstance(value, list) and any(isinstance(v, torch.nn.Parameter) for v in value):
            return True
    return False


class _TrainingHookMode(hook_executor_mode.FunctionHookMode):
    """NNCF's FunctionHookMode with the same operation names and hooks, cheaper per operation:
    the current module scope is kept as a string while modules are entered and left (NNCF joins
    the whole module stack at every operation), and operations without hooks (most of them) are
    called directly instead of through NNCF's pre/post hook machinery, which re-enters the mode
    twice per operation to find nothing to run. Operations with hooks, or with a parameter
    argument, take NNCF's own path unchanged."""

    def __init__(self, model: torch.nn.Module, hook_storage: Any, plan: _TrainingPlan) -> None:
        TorchFunctionMode.__init__(self)
        # The attributes FunctionHookMode.__init__ sets, from the plan.
        self.hook_storage = hook_storage
        self.model = model
        self.module_call_stack: list[torch.nn.Module] = []
        self.nested_enter_count = 0
        self.op_calls: dict[str, int] = defaultdict(int)
        self.enabled = True
        self.const_name_map = plan.const_name_map
        self.in_process_const = False
        self.hooks_module_to_group_name = plan.group_names
        self.counter_reusing_shared_weights = dict(plan.shared_weights)
        self.cache_parameters: dict[int, torch.Tensor] = {}
        self.cache_child_name = plan.child_names
        self._plan = plan
        self._scopes: list[tuple[str, int]] = []  # (scope name, number of names in it)

    def __enter__(self) -> _TrainingHookMode:
        TorchFunctionMode.__enter__(self)
        if self.nested_enter_count == 0:
            for module in self._plan.modules:
                wrapped = self._get_wrapped_call(module._call_impl)
                module.__dict__["_call_impl"] = types.MethodType(wrapped, module)
            self.push_module_call_stack(self.model)
        self.nested_enter_count += 1
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.nested_enter_count -= 1
        if self.nested_enter_count == 0:
            for module in self._plan.modules:
                module.__dict__.pop("_call_impl", None)
            self.pop_module_call_stack()
        TorchFunctionMode.__exit__(self, *exc_info)

    def push_module_call_stack(self, module: torch.nn.Module) -> None:
        # NNCF's get_current_relative_name, one module at a time: a hook module's group name,
        # else the module's name among its caller's children, else nothing.
        if not self.module_call_stack:
            self._scopes.append(("", 0))
        else:
            caller = self.module_call_stack[-1]
            name = self.hooks_module_to_group_name.get(id(module))
            if name is None:
                children = self.cache_child_name.get(id(caller))
                if children is None:
                    children = {id(child): n for n, child in caller.named_children()}
                    self.cache_child_name[id(caller)] = children
                name = children.get(id(module))
            scope, depth = self._scopes[-1]
            if name is not None:
                scope, depth = (name if depth == 0 else f"{scope}/{name}"), depth + 1
            self._scopes.append((scope, depth))
        self.module_call_stack.append(module)

    def pop_module_call_stack(self) -> None:
        self.module_call_stack.pop()
        self._scopes.pop()

    def get_current_relative_name(self) -> str:
        return self._scopes[-1][0]

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        fn_name = func.__name__
        inner = hook_executor_mode.get_handle_inner_function(func)
        if inner is not None:
            with self:
                return inner(*args, **kwargs)
        if not self.enabled or fn_name in hook_executor_mode.IGNORED_FN_NAMES:
            return func(*args, **kwargs)
        op_name = self.get_next_op_call_name(fn_name)
        if op_name.replace(".", ":") not in self._plan.hooked_operations and not _has_parameter(
            args, kwargs
        ):
            return func(*args, **kwargs)
        op_meta = hook_executor_mode.OpMeta(op_name=op_name, func=func)
        args, kwargs = self.execute_pre_hooks(args, kwargs, op_meta)
        output = func(*args, **kwargs)
        return self.execute_post_hooks(output, op_meta)


# Modules whose whole forward is one operation taking `self.weight` at port 1, and that
# operation with another weight: where a weight hook can run outside the hook mode.
_WEIGHT_FORWARDS: dict[type[torch.nn.Module], Callable[[Any, Any, Any], Any]] = {
    torch.nn.Conv2d: lambda module, x, weight: module._conv_forward(x, weight, module.bias),
    torch.nn.Linear: lambda module, x, weight: torch.nn.functional.linear(x, weight, module.bias),
}


def _weight_forward(module: torch.nn.Module) -> Callable[[Any, Any, Any], Any] | None:
    for base, forward in _WEIGHT_FORWARDS.items():
        if type(module).forward is base.forward and (
            base is not torch.nn.Conv2d
            or getattr(type(module), "_conv_forward", None) is torch.nn.Conv2d._conv_forward
        ):
            return forward
    return None


@dataclass
class _ModuleHooks:
    """The hooks of one module that run at its boundary, per call of it in a forward: on its
    weight (the module's only operation takes it at port 1) and on its output (the last
    operation's output is what the module returns)."""

    module: torch.nn.Module
    weight_ops: list[str | None] = field(default_factory=list)
    output_ops: list[str | None] = field(default_factory=list)
    calls: list[int] = field(default_factory=lambda: [0])
    forward: Callable[..., Any] | None = None  # made by bind()

    def call(self, index: int) -> None:
        """Make room for the hooks of call `index`."""
        while len(self.weight_ops) <= index:
            self.weight_ops.append(None)
            self.output_ops.append(None)

    def bind(self, storage: Any) -> None:
        """Make the module's forward with its hooks (`self.forward`), once per plan: the hook
        modules are looked up now (a hook added or replaced makes a new plan)."""
        module, weight_ops, output_ops = self.module, self.weight_ops, self.output_ops
        own_forward = types.MethodType(type(module).forward, module)
        weight_forward = _weight_forward(module)

        def hooks_of(ops: list[str | None], port: int, table: Any) -> list[tuple[Any, ...]]:
            keys = [None if op is None else storage._generate_key(op, port) for op in ops]
            return [() if key is None else tuple(table[key].values()) for key in keys]

        weight_hooks = hooks_of(weight_ops, 1, storage.pre_hooks)
        output_hooks = hooks_of(output_ops, 0, storage.post_hooks)
        calls = self.calls  # calls in the current forward, reset before each

        def forward(*args: Any, **kwargs: Any) -> Any:
            index = calls[0]
            if index >= len(weight_hooks):
                msg = (
                    f"{type(module).__name__} was called more often than in the first forward "
                    "of this kind, which placed its NNCF hooks: the detector's operations "
                    "depend on its input, which NNCF's operation names cannot follow"
                )
                raise RuntimeError(msg)
            calls[0] = index + 1
            if weight_hooks[index]:
                assert weight_forward is not None  # checked when recorded
                weight = module.weight
                for hook in weight_hooks[index]:
                    weight = hook(weight)
                out = weight_forward(module, args[0], weight)
            else:
                out = own_forward(*args, **kwargs)
            for hook in output_hooks[index]:
                out = hook(out)
            return out

        self.forward = forward


class _HookCallRecorder:
    """Stands in for the HookStorage while a forward is recorded: passes every call on and tells
    the mode about the calls that found hooks."""

    def __init__(self, storage: Any, mode: _RecordingHookMode) -> None:
        self.storage = storage
        self.mode = mode

    def execute_pre_function_hooks(self, op_name: str, port_id: int, value: Any) -> Any:
        out = self.storage.execute_pre_function_hooks(op_name, port_id, value)
        if self.storage._generate_key(op_name, port_id) in self.storage.pre_hooks:
            self.mode.hook_ran("pre", op_name, port_id, value, out)
        return out

    def execute_post_function_hooks(self, op_name: str, port_id: int, value: Any) -> Any:
        out = self.storage.execute_post_function_hooks(op_name, port_id, value)
        if self.storage._generate_key(op_name, port_id) in self.storage.post_hooks:
            self.mode.hook_ran("post", op_name, port_id, value, out)
        return out


class _RecordingHookMode(_TrainingHookMode):
    """_TrainingHookMode (same names, same hooks, same results) that also notes where each hook
    runs, to find out whether every hook of this forward sits at a module boundary: on the
    weight of a convolution or linear layer whose forward is that one operation, or on the last
    operation of a module whose output it is (per call of the module: nn.Upsample, say, is
    called once per level with other hooks each time). Then the next forwards of the same kind
    can run without any hook mode (`_ModuleHooks`). Hooks on parameters themselves (NNCF's
    sparsity masks) and on operations inside a module keep the hook mode."""

    def __init__(self, model: torch.nn.Module, hook_storage: Any, plan: _TrainingPlan) -> None:
        super().__init__(model, _HookCallRecorder(hook_storage, self), plan)
        self._frames: list[list[str | None]] = []  # per module call: its op names, None per child
        self._single_input: dict[int, bool] = {}
        self._calls: dict[int, int] = defaultdict(int)
        self._hooks: dict[int, _ModuleHooks] = {}
        self._outputs: dict[tuple[int, int], Any] = {}  # (module id, call) -> its hooked output
        self._in_model_io = False
        self.at_module_boundaries = True

    def _get_wrapped_call(self, fn_call: types.MethodType) -> Callable[..., Any]:
        def wrapped_call(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            self.push_module_call_stack(module)
            self._single_input[id(module)] = len(args) == 1 and not kwargs
            retval = fn_call.__func__(module, *args, **kwargs)
            self._module_returned(module, retval)
            self.pop_module_call_stack()
            return retval

        return wrapped_call

    def push_module_call_stack(self, module: torch.nn.Module) -> None:
        super().push_module_call_stack(module)
        if self._frames and id(module) not in self.hooks_module_to_group_name:
            self._frames[-1].append(None)  # a child module call (hook modules do not count)
        self._frames.append([])
        self._calls[id(module)] += 1

    def pop_module_call_stack(self) -> None:
        self._frames.pop()
        super().pop_module_call_stack()

    def get_next_op_call_name(self, fn_name: str) -> str:
        name = super().get_next_op_call_name(fn_name)
        self._frames[-1].append(name)
        return name

    def process_model_inputs(self, args: Any, kwargs: dict[str, Any]) -> Any:
        self._in_model_io = True  # these hooks run in the same place without a mode
        try:
            return super().process_model_inputs(args, kwargs)
        finally:
            self._in_model_io = False

    def process_model_outputs(self, outputs: Any) -> Any:
        self._in_model_io = True
        try:
            return super().process_model_outputs(outputs)
        finally:
            self._in_model_io = False

    def hook_ran(self, kind: str, op_name: str, port_id: int, value: Any, out: Any) -> None:
        if self._in_model_io:
            return
        module = self.module_call_stack[-1]
        frame = self._frames[-1]
        hooks = self._hooks.setdefault(id(module), _ModuleHooks(module))
        index = self._calls[id(module)] - 1
        hooks.call(index)
        if frame[-1:] != [op_name]:  # a constant's hook, or one not on the current operation
            self.at_module_boundaries = False
        elif kind == "pre" and port_id == 1 and value is getattr(module, "weight", None):
            self.at_module_boundaries &= hooks.weight_ops[index] is None and len(frame) == 1
            hooks.weight_ops[index] = op_name
        elif kind == "post" and port_id == 0 and hooks.output_ops[index] is None:
            hooks.output_ops[index] = op_name
            self._outputs[id(module), index] = out
        else:
            self.at_module_boundaries = False

    def _module_returned(self, module: torch.nn.Module, retval: Any) -> None:
        hooks = self._hooks.get(id(module))
        index = self._calls[id(module)] - 1
        if hooks is None or index >= len(hooks.weight_ops):
            return
        frame = self._frames[-1]
        weight_op, output_op = hooks.weight_ops[index], hooks.output_ops[index]
        if weight_op is not None:
            self.at_module_boundaries &= (
                frame == [weight_op]
                and self._single_input[id(module)]
                and _weight_forward(module) is not None
            )
        if output_op is not None:
            self.at_module_boundaries &= (
                frame[-1:] == [output_op] and retval is self._outputs[id(module), index]
            )

    def module_hooks(self) -> list[_ModuleHooks] | None:
        """Every hook of the recorded forward as module-boundary hooks, or None where some hook
        runs elsewhere (then the hook mode stays)."""
        self._outputs.clear()  # activations: not kept past the forward (mode and recorder
        self._frames.clear()  # reference each other, so only the cycle collector frees them)
        hooks = list(self._hooks.values())
        if not self.at_module_boundaries or any(
            h.module is self.model or "forward" in vars(h.module) for h in hooks
        ):
            return None
        for h in hooks:
            h.call(self._calls[id(h.module)] - 1)  # calls after the last hooked one: none
        return hooks


class _TrainingForward(ForwardWithHooks):
    """NNCF's ForwardWithHooks, cheaper. The first forward of each kind (training or not, and
    mmdet's `mode`) runs _RecordingHookMode; if that found every hook at a module boundary, the
    next forwards of that kind run with no hook mode at all, each hook wrapped around its
    module's forward for the duration of the call (`_ModuleHooks`): the same operations on the
    same tensors, without naming each operation in Python. Otherwise _TrainingHookMode. The
    sequence of operations of a forward must depend on its kind only, as NNCF's operation names
    already assume. A copy of the model (mmengine's EMA model) gets NNCF's own ForwardWithHooks:
    the plan describes this model only."""

    forwards: dict[str, int]  # forwards run per path, for tests

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        storage = get_hook_storage(self.model)
        plan = self.__dict__.get("plan")
        # A hook added, a module or parameter replaced: the plan is made again.
        if plan is None or plan.structure != _structure(self.model, storage):
            plan = self.__dict__["plan"] = _TrainingPlan(self.model)
        kind = (self.model.training, kwargs.get("mode"), len(args), tuple(sorted(kwargs)))
        self.__dict__.setdefault("forwards", defaultdict(int))
        if kind not in plan.module_hooks:
            self.forwards["recorded"] += 1
            with _RecordingHookMode(self.model, storage, plan) as recorder:
                outputs = self._run(recorder, args, kwargs)
            plan.module_hooks[kind] = recorder.module_hooks()
            for hooks in plan.module_hooks[kind] or ():
                hooks.bind(storage)
            return outputs
        module_hooks = plan.module_hooks[kind]
        if module_hooks is None:  # some hook sits inside a module's computation
            self.forwards["hook mode"] += 1
            with _TrainingHookMode(self.model, storage, plan) as mode:
                return self._run(mode, args, kwargs)
        self.forwards["module hooks"] += 1
        for hooks in module_hooks:
            hooks.calls[0] = 0
            vars(hooks.module)["forward"] = hooks.forward
        try:  # model inputs and outputs: NNCF's own calls, which need no mode entered
            return self._run(_TrainingHookMode(self.model, storage, plan), args, kwargs)
        finally:
            for hooks in module_hooks:
                vars(hooks.module).pop("forward", None)

    def _run(self, mode: _TrainingHookMode, args: Any, kwargs: dict[str, Any]) -> Any:
        args, kwargs = mode.process_model_inputs(args, kwargs)
        outputs = self.orig_forward(*args, **kwargs)
        return mode.process_model_outputs(outputs)

    def __reduce__(self) -> Any:
        model, forward = self.model, self.orig_forward
        return ForwardWithHooks, (model, forward), (model, forward, None)


def _is_single_stage_detector(model: torch.nn.Module) -> bool:
    from mmdet.models.detectors import SingleStageDetector  # only for models with a bbox_head

    return isinstance(model, SingleStageDetector)


def speed_up_training(model: torch.nn.Module) -> Callable[[], None]:
    """Speed up training without changing any result (a test compares losses, gradients and
    predictions bit for bit):
    - the hook modules' own arithmetic (quantizers, sparsity masks) and the dense heads' loss and
      postprocessing (`loss_by_feat`, `predict_by_feat`) run outside NNCF's function-hook mode.
      That mode names every torch operation of a forward in Python (~50 µs each here) to find
      the hooks to run; no hook sits on those operations (quantizers are placed on the
      `tensor`-mode graph);
    - with the fused CPU kernels in use, symmetric quantizers run them in one call each way
      (`fused_symmetric_forward`);
    - the model's forward is a `_TrainingForward`: with no hook mode at all where every hook
      sits at a module boundary (`_ModuleHooks`), else `_TrainingHookMode`, NNCF's mode with
      its per-forward set-up done once and hook-less operations called directly (same names,
      same hooks).
    Patched on the instances as bound methods (a deep copy, e.g. mmengine's EMA model, rebinds
    them to itself); returns the function that removes the patches."""
    # Long on purpose: the docstring explains each speed-up; the body installs them and
    # builds one undo.
    from nncf.torch.function_hook.hook_executor_mode import disable_function_hook_mode
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.layers import SymmetricQuantizer

    from detcompress.compression import cpu_fake_quantize

    def untraced(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not torch._C._is_torch_function_mode_enabled():  # e.g. with module hooks
                return method(self, *args, **kwargs)
            with disable_function_hook_mode():
                return method(self, *args, **kwargs)

        return call

    kernels = extensions.QuantizedFunctionsCPU._loaded_namespace
    fused = isinstance(kernels, cpu_fake_quantize.FusedQuantizedFunctions)
    patched: list[tuple[torch.nn.Module, str]] = []
    targets: dict[tuple[int, str], tuple[torch.nn.Module, str, Callable[..., Any]]] = {}
    for _, hook in get_hook_storage(model).named_hooks():
        method = type(hook).forward
        if fused and type(hook) is SymmetricQuantizer:
            method = fused_symmetric_forward(kernels)
        targets[id(hook), "forward"] = (hook, "forward", method)
    # Single-stage heads only: there the traced (tensor-mode) graph ends at the head's outputs.
    # A two-stage detector's tensor mode runs the RPN's predict_by_feat, whose operations are
    # part of the graph NNCF quantized.
    head = getattr(model, "bbox_head", None)
    if head is not None and _is_single_stage_detector(model):
        for name in ("loss_by_feat", "predict_by_feat"):
            if callable(getattr(type(head), name, None)):
                targets[id(head), name] = (head, name, getattr(type(head), name))
    for module, name, method in targets.values():
        if name in vars(module):
            continue  # already patched (by us or by someone else): leave it
        setattr(module, name, types.MethodType(untraced(method), module))
        patched.append((module, name))
    nncf_forward = vars(model).get("forward")
    replace_forward = type(nncf_forward) is ForwardWithHooks  # not already ours, nor another's
    if replace_forward:
        assert isinstance(nncf_forward, ForwardWithHooks)  # for mypy
        del vars(model)["forward"]  # ForwardWithHooks refuses a model that already has one
        vars(model)["forward"] = _TrainingForward(model, nncf_forward.orig_forward)

    def undo() -> None:
        for module, name in patched:
            vars(module).pop(name, None)
        if replace_forward and isinstance(vars(model).get("forward"), _TrainingForward):
            vars(model)["forward"] = nncf_forward

    return undo
