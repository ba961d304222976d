"""Checking torch tensors and handing their memory to the kernels.

A CPU tensor reaches the CPU kernels as a NumPy view of its memory
(``Tensor.numpy()``: same memory, same strides, no copy; what ``np.from_dlpack``
gives too, at a tenth of its cost per call, 1 us against 10); a CUDA tensor goes to
``ssl_core.ops`` as it is, which reads its ``__cuda_array_interface__`` and
runs the CUDA kernel on torch's current stream. Either way the results are
torch tensors allocated here, written in place by the kernels.
"""

import torch

_DEVICES = ("cpu", "cuda")


def kernel_view(tensor):
    """What ``ssl_core.ops`` is given for ``tensor``: a NumPy view of a CPU
    tensor, the (detached) tensor itself on CUDA (bfloat16 viewed as uint16);
    None stays None. Detached,
    because inside a custom operator the inputs may still require grad, and
    neither ``numpy()`` nor ``__cuda_array_interface__`` export such tensors."""
    if tensor is None:
        return None
    if tensor.device.type == "cuda":
        # bfloat16 has no __cuda_array_interface__ typestr; the kernels take its bits as uint16.
        return tensor.detach().view(torch.uint16) if tensor.dtype == torch.bfloat16 else tensor.detach()
    return tensor.detach().numpy()


_AUTOCAST_WIDENED = (torch.float16, torch.bfloat16)  # what autocast hands a float32 operator


def widened_by_autocast(tensor):
    """True if ``tensor`` is 16-bit float inside torch.autocast on its device
    (which casts the operators' inputs to float32)."""
    return (tensor.dtype in _AUTOCAST_WIDENED and tensor.device.type in _DEVICES
            and torch.is_autocast_enabled(tensor.device.type))


def check_tensor(name, tensor, dtypes=(torch.float32,), optional=False, like=None):
    """TypeError/ValueError naming ``name`` unless ``tensor`` is a torch.Tensor
    of one of ``dtypes`` (also 16-bit float where float32 is expected, inside
    torch.autocast, which widens it), on the CPU or a CUDA device (``like``'s
    device when given)."""
    if tensor is None and optional:
        return
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__module__}.{type(tensor).__qualname__}")
    if tensor.dtype not in dtypes and not (torch.float32 in dtypes and widened_by_autocast(tensor)):
        allowed = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        hint = "; convert it with .float()" if torch.float32 in dtypes and tensor.is_floating_point() else ""
        raise TypeError(f"{name} must be a {allowed} tensor, got {str(tensor.dtype).replace('torch.', '')}{hint}")
    if tensor.device.type not in _DEVICES:
        raise TypeError(f"{name} is on device {tensor.device}; ssl_core's kernels take CPU and CUDA tensors")
    if like is not None and tensor.device != like.device:
        raise ValueError(f"{name} is on {tensor.device} but the other tensors are on {like.device}")


def check_last_axis_contiguous(name, tensor):
    """ValueError naming ``name`` unless the last axis of ``tensor`` has stride 1
    (what the kernels read; anything else would need a silent copy). None passes."""
    if tensor is not None and tensor.dim() and tensor.shape[-1] > 1 and tensor.stride(-1) != 1:
        raise ValueError(
            f"{name} must have a contiguous last axis (stride 1), got strides {tuple(tensor.stride())}; "
            "call .contiguous() on it"
        )


def dense(tensor):
    """``tensor``, copied if it is not contiguous: for the gradients autograd
    hands to a backward (e.g. the stride-0 expansions of ``y.sum()``), whose
    layout no caller chooses."""
    return tensor if tensor.is_contiguous() else tensor.contiguous()
