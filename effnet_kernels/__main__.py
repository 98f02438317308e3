"""Command line: ``python -m effnet_kernels {info,demo,bench,predict,scale,train}``.

  info   how the compiled core was built, the devices, and the backends each can use
  demo   classify images with the real pretrained EfficientNet-Lite0 weights (top-5 + timing;
         --int8 adds the INT8 model's top-1)
  bench  benchmark whole models against the baselines (effnet_kernels/bench/)
  predict  batch inference over image files/folders/globs (effnet_kernels/predict.py)
  scale  the largest EfficientNet that fits a latency budget here (effnet_kernels/scaling.py)
  train  fine-tune on an ImageFolder directory (effnet_kernels/train_cli.py)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

DEFAULT_IMAGES = ("chelsea", "coffee", "astronaut", "rocket")


def cmd_info(args) -> int:
    import torch

    import effnet_kernels as ek

    info = ek.build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"effnet_kernels {info['version']}")
    if info["extension"]:
        cuda = (f"yes (CUDA {info['cuda_version']}, archs {info['archs']})" if info["has_cuda"]
                else "no (CPU-only build)")
        print(f"  compiled core   : effnet_kernels._C, built against torch {info['torch_version']}")
        print(f"  CUDA kernels    : {cuda}")
    else:
        print(f"  compiled core   : MISSING ({info['extension_error']})")
    print(f"  torch           : {info['torch_runtime']} (CUDA {torch.version.cuda or 'none'})")
    try:
        import triton

        print(f"  triton          : {triton.__version__}")
    except ImportError:
        print("  triton          : not installed")
    print(f"  CPU backends    : {', '.join(info['backends']['cpu'])}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"  cuda:{i}          : {torch.cuda.get_device_name(i)}")
        print(f"  CUDA backends   : {', '.join(info['backends']['cuda'])}")
    else:
        print("  GPU             : none visible")
    return 0


def cmd_demo(args) -> int:
    import torch
    from torchvision.models._meta import _IMAGENET_CATEGORIES as LABELS

    from effnet_kernels import data
    from effnet_kernels.convert import imagenet_preprocess, load_lite0_pretrained

    try:
        model = load_lite0_pretrained()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    model.eval()
    import effnet_kernels as ek

    fused = ek.optimize(model, backend=args.backend)
    images = args.images or list(DEFAULT_IMAGES)
    q = None
    if args.int8:
        calib = data.random_crops(data.CALIBRATION_IMAGES, 4, seed=1)
        q = ek.quantize(fused, list(calib.split(12)), backend="auto")
        print(f"INT8: ek.quantize calibrated on {len(calib)} random crops of "
              f"{len(data.CALIBRATION_IMAGES)} scikit-image pictures; int8 ops on "
              f"{q.backends['pointwise_int8']!r} (on the CPU the exact integer arithmetic, "
              "not yet fast int8 kernels)")
    print(f"EfficientNet-Lite0, real ImageNet weights, on CPU ({torch.get_num_threads()} threads): "
          f"eager PyTorch vs ek.optimize (backends {fused.backends})")

    def timed(f, x):
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            out = f(x)
        return out, (time.perf_counter() - t0) * 1e3 / args.repeat

    with torch.inference_mode():
        for f in (model, fused):  # warm-up
            f(torch.zeros(1, 3, 224, 224))
        for name in images:
            try:
                img = data.load_image(name)
            except ValueError as e:
                raise SystemExit(str(e)) from e
            x = imagenet_preprocess(img.permute(1, 2, 0))
            logits, ms = timed(model, x)
            logits_f, ms_f = timed(fused, x)
            probs = logits_f.float().softmax(-1)[0]
            top = probs.topk(5)
            same = "same top-1" if logits.argmax() == logits_f.argmax() else "TOP-1 DIFFERS"
            print(f"\n{name}: eager {ms:.1f} ms/image, optimized {ms_f:.1f} ms/image "
                  f"({ms / ms_f:.2f}x, {same})")
            for p, i in zip(top.values.tolist(), top.indices.tolist()):
                print(f"  {p:6.3f}  {LABELS[i]}")
            if q is not None:
                logits_q, ms_q = timed(q, x)
                pq = logits_q.float().softmax(-1)[0]
                i = int(pq.argmax())
                same = "same top-1" if i == int(logits_f.argmax()) else "TOP-1 DIFFERS"
                print(f"  int8: {pq[i]:.3f}  {LABELS[i]}  ({same} as fp32; {ms_q:.1f} ms/image)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet_kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="build info, devices and available backends")
    pi.add_argument("--json", action="store_true", help="print build_info() as JSON")
    pi.set_defaults(fn=cmd_info)
    pd = sub.add_parser("demo", help="classify images with pretrained EfficientNet-Lite0")
    pd.add_argument("images", nargs="*",
                    help=f"image files or scikit-image sample names (default: {' '.join(DEFAULT_IMAGES)})")
    pd.add_argument("--repeat", type=int, default=5, help="timed forwards per image (default 5)")
    pd.add_argument("--backend", default="auto", choices=["auto", "cpu", "torch"],
                    help="backend of the optimized model (default: auto = best available)")
    pd.add_argument("--int8", action="store_true",
                    help="also run the INT8 model (ek.quantize, calibrated on other pictures)")
    pd.set_defaults(fn=cmd_demo)
    from effnet_kernels.bench.cli import add_parser as add_bench_parser
    from effnet_kernels.predict import add_parser as add_predict_parser
    from effnet_kernels.scaling import add_parser as add_scale_parser
    from effnet_kernels.train_cli import add_parser as add_train_parser

    add_bench_parser(sub)
    add_predict_parser(sub)
    add_scale_parser(sub)
    add_train_parser(sub)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
