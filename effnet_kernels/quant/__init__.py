"""INT8 post-training quantization: ``q = ek.quantize(f, calibration_batches)``.

Scheme (the arithmetic is defined exactly by ``reference.py``, section "INT8"):

* **Weights**: BN-folded, symmetric per output channel (depthwise: per channel) int8 in
  [−127, 127], ``s_w[c] = max|w[c]| / 127``. Biases stay float32 (the accumulator is dequantised
  as ``acc · s_in·s_w[c] + bias[c]``, one float multiply-add).
* **Activations**: int8 with one (scale, zero point) per tensor, asymmetric (SiLU's range is
  about [−0.28, max]: a zero point buys almost a bit there), real 0 exactly representable.
  Quantised tensors: every block's expand output, depthwise output and block output (and the
  stem output with ``first_dw_float=False``). The int8 tensors between ops are all the
  activation traffic: 1 byte per element, half of fp16.
* **Kept in float** (and why): the *stem conv* (3 input channels, 2.8 % of B0's MACs, but its
  int8 weights alone would cost Lite0's logits 29 dB — as much as all 16 project layers in int8,
  measured by ``float_kept_sqnr``); the *first depthwise conv* (``first_dw_float=True``, the
  default: it reads the float stem output, so the stem output is not quantised either; its int8
  weights alone cost Lite0's logits 22 dB, see ``FloatDWConvQuantOut``; with
  ``first_dw_float=False`` the stem runs conv → ``bias_act`` → quantise and the first block
  reads int8);
  the *SE FCs* (``se_gate`` in float32 from the float32 pool that the int8 depthwise kernel
  computes from its *float* activations before requantising: a few KB per image, and the gate
  multiplies every channel of the block, so its error would be everywhere; int8 FCs measured
  35 dB on B0: affordable, but there are no bytes to win); the *head pool and the classifier*
  (the int8 head GEMM returns the float32 pool directly, the 1280→1000 ``F.linear`` is 1.3 M
  MACs on a vector; int8 would cost 39–43 dB). ``layer_sqnr`` measures what each int8 layer type
  costs; the numbers are in ``benchmarks/results/int8_accuracy.md``.

Per MBConv block (int8 in, int8 out)::

    h  = pointwise_int8(x, act)                               [expand]
    y, pool = dwconv_int8(h, act, return_pool=SE)             float32 pool of the float act
    g  = se_gate(pool)                                        float32
    out = pointwise_int8(y, gate=g, residual=x)               [project; gate applied to the
                                                               int8 input in its own scale]

Calibration (``method``): run the float model over ``calibration_batches`` and observe every
quantised tensor: running min/max, plus a random sample of up to 2¹⁹ values per tensor
(``max_samples``). ``"minmax"`` uses the observed range; ``"percentile"`` the
``percentile`` / ``100 − percentile`` quantiles of the sample (default 99.99); ``"mse"`` (the
default: the best logit SQNR in ``benchmarks/results/int8_accuracy.md``) the clipping range that
minimises the quantisation MSE on (up to 2¹⁷ values of) the sample, by a coordinate search over
the upper then the lower bound. ``method`` can also be a dict of ``fnmatch`` patterns over the
tensor names (``"stem"``, ``"blocks.3.1.expand"``, ``"blocks.3.1.dw"``, ``"blocks.3.1"`` for a
block output) to methods, the first match wins and ``"*"`` is the default (``q.calibration``
records what each tensor got). Then (``bias_correction=True``) each int8 layer's bias absorbs
the mean error its rounded weights add, measured on the same batches.

Backends (resolved once, per op, by ``effnet_kernels.registry``; ``q.backends``): ``"torch"`` is
the exact integer reference (the oracle); ``"cpu"`` the C++ CPU kernels where the build has them;
``"triton"`` runs the int8 ops in Triton; ``"cuda"`` runs ``dwconv_int8`` in CUDA and the ops
without a CUDA kernel in Triton (stated in ``q.substitutions``); ``"auto"``: cuda → triton on a
GPU; on the CPU the float parts on the C++ kernels and the int8 ops on the reference, which is
faster than their exact C++ ports for now (``registry._AUTO_ORDER_FOR``).

Package layout: ``calibration`` (int8 grid, observers, range choices, bias correction, the
calibration pass), ``modules`` (the int8 modules and model), ``builder`` (``quantize``,
``load_quantized``); ``analysis`` (per-layer SQNR tools for reports; not imported here).

**Status**: the int8 Triton kernels are tested under the interpreter only and the CUDA int8
depthwise kernel has never run on a GPU; only the ``"torch"`` path has produced the accuracy
figures.
"""


from .builder import load_quantized, quantize
from .calibration import METHODS, qparams_from_range, quantize_weight, sqnr_db
from .modules import (
    FloatDWConvQuantOut,
    QuantizedDWConv,
    QuantizedEfficientNet,
    QuantizedMBConv,
    QuantizedPointwise,
    QuantizedStem,
)

__all__ = ["quantize", "load_quantized", "QuantizedEfficientNet", "QuantizedMBConv",
           "QuantizedStem", "QuantizedPointwise", "QuantizedDWConv", "FloatDWConvQuantOut",
           "METHODS", "qparams_from_range", "quantize_weight", "sqnr_db"]
