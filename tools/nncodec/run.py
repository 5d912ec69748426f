"""NNCodec (MPEG NNC, ISO/IEC 15938-17; PyPI `nncodec`) on the shared Fashion-MNIST ResNets.

One process per model. Stages (all on by default, each can be chosen with --stages):
  check     the PyTorch module reproduces the ONNX (accuracy, logits against onnxruntime)
  rtn       per-channel int8 / int4 round-to-nearest (rtn.py), the common anchor
  datafree  NNCodec without data: uniform quantizer, dependent (trellis-coded) quantization,
            DeepCABAC, with and without its layer-wise QP modification (opt_qp), swept over qp
  data      NNCodec with data: local scaling adaptation (LSA) + fine-tuning of the non-weight
            parameters (FT: biases and the LSA scales) on quantized weights, one partial epoch
            (--batches batches of --batch), the best of {before, after} by validation loss as
            NNCodec's tune_model picks it, then quantize + encode; swept over qp

Ratio = ONNX file bytes / NNCodec bitstream bytes (everything `compress_model` returns; the
ONNX has BatchNorm folded, so biases are coded too, at NNCodec's default nonweight_qp -75).
Accuracy: the decoded bitstream loaded into the module, full 10,000-image test set.

Rows are appended to OUT/<model>.tsv as they finish; a rerun skips rows already there, so an
interrupted sweep resumes.

Two compatibility shims, both without effect on the numbers:
  * NNCodec's ScaledConv2d.forward (LSA) parses torch.__version__ with int() and raises on
    PyPI's local version suffix ('2.5.1+cu124'); it is replaced by the branch it would take
    (conv with weight_scaling * weight and bias).
  * NNCodec's tune/eval/test functions call torch.set_num_threads(1); every call is pinned to
    --threads instead (default 2: the machine is shared).
"""

import argparse
import csv
import functools
import logging
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import data as fmnist  # noqa: E402
import rtn  # noqa: E402
from resnet import FoldedResNet, load_bn_model, load_from_onnx  # noqa: E402

LOG = logging.getLogger("nncodec-baseline")
COLUMNS = ["method", "setting", "qp", "bitstream_bytes", "ratio", "accuracy", "drop_points", "seconds"]
DEPTHS = {"resnet20": 20, "resnet56": 56}
USE_CASE = "NNR_PYT_FMNIST"


def parse_ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def pin_threads(n):
    original = torch.set_num_threads
    original(n)

    @functools.wraps(original)
    def pinned(_requested):
        original(n)

    torch.set_num_threads = pinned


def patch_nncodec():
    from nncodec.framework.applications.utils import transforms as nnc_transforms

    def scaled_conv_forward(self, x):
        return self._conv_forward(x, self.weight_scaling * self.weight, self.bias)

    nnc_transforms.ScaledConv2d.forward = scaled_conv_forward


class Rows:
    """The model's TSV: appends finished rows, remembers which (method, setting, qp) exist."""

    def __init__(self, path):
        self.path = path
        self.done = set()
        if os.path.exists(path):
            with open(path, newline="") as f:
                for row in csv.DictReader(f, delimiter="\t"):
                    self.done.add((row["method"], row["setting"], row["qp"]))
        else:
            with open(path, "w", newline="") as f:
                f.write("\t".join(COLUMNS) + "\n")

    def has(self, method, setting, qp):
        return (method, setting, str(qp)) in self.done

    def add(self, method, setting, qp, nbytes, ratio, acc, drop, seconds):
        row = [method, setting, str(qp), str(nbytes), f"{ratio:.2f}", f"{acc:.2f}", f"{drop:.2f}", f"{seconds:.1f}"]
        with open(self.path, "a", newline="") as f:
            f.write("\t".join(row) + "\n")
        self.done.add((method, setting, str(qp)))
        LOG.info("ROW %s", " | ".join(row))


class Bench:
    def __init__(self, args):
        self.args = args
        self.depth = DEPTHS[args.model]
        self.onnx_bytes = os.path.getsize(args.onnx)
        xs, ys = fmnist.load_split(args.data_dir, "t10k")
        self.x = fmnist.normalize(xs).contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(ys)
        self.model = load_from_onnx(args.onnx, self.depth)
        self.base_acc, self.base_logits = self.evaluate_state(self.model.state_dict())
        LOG.info("%s: ONNX %d bytes, PyTorch module test accuracy %.2f%%", args.model, self.onnx_bytes, self.base_acc)
        os.makedirs(args.work, exist_ok=True)
        self.rows = Rows(os.path.join(args.out, f"{args.model}.tsv"))

    def evaluate_state(self, state):
        model = FoldedResNet(self.depth)
        model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})
        model = model.to(memory_format=torch.channels_last)
        return fmnist.evaluate(model, self.x, self.y)

    # -- check ---------------------------------------------------------------------------
    def check(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.args.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(self.args.onnx, opts, providers=["CPUExecutionProvider"])
        x = self.x.contiguous().numpy()
        ref = np.concatenate([sess.run(None, {"input": x[i : i + 500]})[0] for i in range(0, len(x), 500)])
        ours = self.base_logits.numpy()
        ort_acc = float((ref.argmax(1) == self.y.numpy()).mean() * 100)
        LOG.info(
            "check: PyTorch %.2f%%, onnxruntime %.2f%%, max |logit difference| %.3g, argmax agreement %.2f%%",
            self.base_acc,
            ort_acc,
            float(np.abs(ref - ours).max()),
            float((ref.argmax(1) == ours.argmax(1)).mean() * 100),
        )

    # -- rtn -----------------------------------------------------------------------------
    def rtn(self):
        for bits in (8, 4):
            setting = "per-channel symmetric, f16 scales, f32 biases"
            method = f"int{bits} RTN"
            if self.rows.has(method, setting, "-"):
                continue
            t0 = time.time()
            state, nbytes = rtn.quantize_state(self.model.state_dict(), bits)
            seconds = time.time() - t0
            acc, _ = self.evaluate_state(state)
            self.rows.add(method, setting, "-", nbytes, self.onnx_bytes / nbytes, acc, acc - self.base_acc, seconds)

    # -- NNCodec ---------------------------------------------------------------------------
    def register_use_case(self):
        from nncodec.framework.applications.utils import evaluation, train
        from nncodec.framework.use_case_init import ModelSetting, use_cases

        args = self.args

        @functools.lru_cache(maxsize=None)
        def split_data(name):
            if name == "test":
                images, labels = fmnist.load_split(args.data_dir, "t10k")
                return fmnist.FashionMNIST(images, labels)
            images, labels = fmnist.load_split(args.data_dir, "train")
            if name == "val":
                # NNCodec's CIFAR use cases validate on the first training images; the
                # validation loss picks between the tuned and the untuned parameters.
                return fmnist.FashionMNIST(images[: args.val_images], labels[: args.val_images])
            return fmnist.FashionMNIST(images, labels, augment=True)

        # ModelSetting calls dataset(root=..., split=...).
        use_cases[USE_CASE] = ModelSetting(
            None,
            evaluation.evaluate_classification_model,
            train.train_classification_model,
            lambda root, split="test": split_data(split),
            torch.nn.CrossEntropyLoss(),
        )

    def source_model(self):
        """The module NNCodec gets: the ONNX's folded convs, or (--bnf) the trained network
        with its BatchNorm layers from the .safetensors, which NNCodec folds itself (its BNF
        tool: unfolded weights coded at the step size, the per-channel BN scale and bias as
        separate non-weight tensors at nonweight_qp)."""
        if self.args.bnf:
            return load_bn_model(self.args.onnx.replace(".onnx", ".safetensors"), self.depth)
        return load_from_onnx(self.args.onnx, self.depth)

    def fold_decoded(self, decoded):
        """Decoded tensors -> the folded module's state dict. With BNF the decoder returns
        `X.weight` (unfolded), `X.weight_scaling` (gamma / sqrt(var + eps), times the LSA scale
        when there is one) and `X.weight.bias`; the folded weight is their product."""
        if not self.args.bnf:
            return decoded
        out = {}
        for name in self.model.state_dict():
            stem = name[: -len(".weight")] if name.endswith(".weight") else name[: -len(".bias")]
            if name.endswith(".weight") and name + "_scaling" in decoded:
                w = np.asarray(decoded[name])
                scale = np.asarray(decoded[name + "_scaling"]).reshape(-1, *([1] * (w.ndim - 1)))
                out[name] = w * scale
            elif name.endswith(".bias") and stem + ".weight.bias" in decoded:
                out[name] = np.asarray(decoded[stem + ".weight.bias"])
            else:
                out[name] = np.asarray(decoded[name])
        return out

    def nncodec_point(self, method, setting, qp, opt_qp, with_data):
        from nncodec import nnc
        from nncodec.framework import use_case_init

        if self.rows.has(method, setting, qp):
            return
        args = self.args
        model = self.source_model()
        kwargs = dict(
            qp=qp,
            use_dq=True,
            lambda_scale=args.lambda_scale,
            opt_qp=opt_qp,
            bnf=args.bnf,
            bitstream_path=os.path.join(args.work, f"{args.model}_{method}_{qp}_{int(opt_qp)}.nnc".replace(" ", "_")),
            return_bitstream=True,
            verbose=args.verbose,
        )
        if with_data:
            # Same shuffling for every point, as in a fresh process.
            use_case_init.g.manual_seed(0)
            torch.manual_seed(0)
            kwargs.update(
                lsa=True,
                fine_tune=True,
                use_case=USE_CASE,
                dataset_path=args.data_dir,
                learning_rate=args.lr,
                batch_size=args.batch,
                epochs=1,
                # NNCodec's train loop stops after the batch whose index equals max_batches.
                max_batches=args.batches - 1,
                num_workers=0,
            )
        t0 = time.time()
        bitstream = nnc.compress_model(model, **kwargs)
        enc_s = time.time() - t0
        t1 = time.time()
        decoded = nnc.decompress(bytearray(bitstream), reconstruct_lsa=with_data and not args.bnf)
        if args.bnf:
            LOG.info("qp %d: decoded tensors %s", qp, ", ".join(sorted(decoded)[:6]))
        decoded = self.fold_decoded(decoded)
        dec_s = time.time() - t1
        expected = set(self.model.state_dict())
        if with_data:
            # Without reconstruct_lsa the decoder returns the LSA scales as tensors of their
            # own: their presence shows LSA was not silently switched off by NNCodec.
            extra = sorted(k for k in nnc.decompress(bytearray(bitstream)) if "scaling" in k)
            LOG.info("qp %d: %d LSA scale tensors in the bitstream (%s ...)", qp, len(extra), ", ".join(extra[:2]))
        if set(decoded) != expected:
            raise RuntimeError(f"decoded tensors {sorted(set(decoded) ^ expected)} differ from the model's")
        acc, _ = self.evaluate_state(decoded)
        nbytes = len(bitstream)
        LOG.info("%s qp %d: encode %.1f s, decode %.2f s, %d bytes", setting, qp, enc_s, dec_s, nbytes)
        self.rows.add(method, setting, qp, nbytes, self.onnx_bytes / nbytes, acc, acc - self.base_acc, enc_s)

    def lambda_note(self):
        return f", RDOQ lambda_scale {self.args.lambda_scale:g}" if self.args.lambda_scale else ""

    def datafree(self):
        for opt_qp in [{"on": True, "off": False}[v] for v in self.args.opt_qp.split(",")]:
            setting = "dq" + (", opt_qp" if opt_qp else "") + self.lambda_note()
            for qp in parse_ints(self.args.datafree_qps):
                method = "NNCodec data-free" + (" BNF" if self.args.bnf else "") + ("" if opt_qp else " (no opt_qp)")
                self.nncodec_point(method, setting, qp, opt_qp, with_data=False)

    def with_data(self):
        self.register_use_case()
        a = self.args
        setting = (
            f"dq, opt_qp{self.lambda_note()}, LSA+FT 1 epoch x {a.batches} batches of {a.batch}, Adam lr {a.lr:g}, val {a.val_images} train imgs"
        )
        for qp in parse_ints(a.data_qps):
            self.nncodec_point("NNCodec with data" + (" BNF" if a.bnf else ""), setting, qp, True, with_data=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(DEPTHS), required=True)
    p.add_argument("--onnx", help="default: /work/shared/models/<model>_fashion_mnist.onnx")
    p.add_argument("--data-dir", default=fmnist.DEFAULT_DIR)
    p.add_argument("--out", default="docs/results/nncodec")
    p.add_argument("--work", default="/tmp/nncodec-work", help="where the .nnc bitstreams go")
    p.add_argument("--stages", default="check,rtn,datafree,data")
    p.add_argument("--datafree-qps", default="-40,-38,-36,-34,-32,-30,-28,-26,-24")
    p.add_argument("--data-qps", default="-30,-28,-26,-24,-22")
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument(
        "--lambda-scale",
        type=float,
        default=0.0,
        help="NNCodec's rate-distortion quantization weight (0, its default everywhere: distortion-only trellis)",
    )
    p.add_argument("--opt-qp", default="on,off", help="which of opt_qp on/off the data-free sweep runs")
    p.add_argument(
        "--bnf",
        action="store_true",
        help="give NNCodec the unfolded network (.safetensors, BatchNorm layers) and its BNF tool",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--verbose", action="store_true", help="NNCodec's own progress output")
    args = p.parse_args()
    if args.onnx is None:
        args.onnx = f"/work/shared/models/{args.model}_fashion_mnist.onnx"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    os.makedirs(args.out, exist_ok=True)
    pin_threads(args.threads)
    patch_nncodec()
    from importlib.metadata import version

    LOG.info(
        "nncodec %s, torch %s, numpy %s, threads %d, args %s",
        version("nncodec"),
        torch.__version__,
        np.__version__,
        args.threads,
        vars(args),
    )
    bench = Bench(args)
    stages = args.stages.split(",")
    if "check" in stages:
        bench.check()
    if "rtn" in stages:
        bench.rtn()
    if "datafree" in stages:
        bench.datafree()
    if "data" in stages:
        bench.with_data()


if __name__ == "__main__":
    main()
