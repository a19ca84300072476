"""fastctc._cuda: the GPU path's public face (the names the rest of fastctc imports).

The work is split in two modules, both imported lazily (fastctc never imports them, nor
cuda.core, torch or CuPy, at start-up):

    fastctc._cuda_build    NVRTC compile, disk cache, kernel loading, status()
    fastctc._cuda_launch   arrays, workspace, geometry, launches, the torch entry points
                           (torch_forward / torch_backward / torch_ctc: sync-free)

    status()      -> dict, cheap, never raises (used by fastctc.info())
    run_device(acts, targets, input_lengths, target_lengths, *, blank, from_logits,
               want_grad, grad_weights=None, want_alpha=False, max_target_length=None,
               mean_weights=False)
                  -> (costs (N,), grad (T, N, C) or None, log_alpha (N, T, 2S+1) or None)
    compile_cubin(arch) -> bytes (NVRTC only: works without a GPU or a driver)

docs/gpu.md describes the kernels, the determinism and memory guarantees and the device check.
"""
from ._cuda_build import (  # noqa: F401
                          NVCC_FLAGS,
                          NVRTC_OPTIONS,
                          CUDACompileError,
                          cache_dir,
                          cache_key,
                          compile_cubin,
                          kernels,
                          nvrtc_version,
                          source_path,
                          status,
)
from ._cuda_launch import (  # noqa: F401
                          KERNEL_TYPES,
                          LSE_ARGS,
                          REDUCE_ARGS,
                          TRELLIS_ARGS,
                          ctc_loss_device,
                          is_cuda_array,
                          pack_args,
                          plan,
                          run_device,
                          torch_backward,
                          torch_ctc,
                          torch_forward,
)
