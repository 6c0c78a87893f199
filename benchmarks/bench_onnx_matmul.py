"""Float32 matrix products of the full-size model's shapes in onnxruntime and in PyTorch: the floor of both backends.

The ConvNeXt-L trunk's pointwise layers (most of its time) and the pixel decoder's feed-forward layers are products of
`[tokens, C_in]` activations with a constant `[C_in, C_out]` weight. Each shape runs as a one-node onnxruntime graph
(MatMul with the weight as an initializer, which onnxruntime pre-packs) and as `torch.nn.Linear` without a bias,
timed alternately; the script prints GFLOP/s (2 x M x K x N per product) of the median run and their ratio.

    python benchmarks/bench_onnx_matmul.py --repeats 5
"""

import argparse
import statistics
import time

import numpy as np
import torch
from measure import machine_description, set_threads

# (tokens, in, out): trunk stage 1 at 800x1088 (fc1, fc2), stage 3 (fc1, fc2), pixel decoder feed-forward.
SHAPES = ((54400, 192, 768), (54400, 768, 192), (3400, 768, 3072), (3400, 3072, 768), (17850, 256, 1024))


def onnx_matmul(weight, threads):
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    inputs, outputs = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", outputs])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as ITAOnnxModel
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(machine_description(args.threads))
    rng = np.random.default_rng(0)
    for tokens, inputs, outputs in SHAPES:
        x = rng.standard_normal((tokens, inputs), dtype=np.float32)
        weight = rng.standard_normal((inputs, outputs), dtype=np.float32) / inputs**0.5
        linear = torch.nn.Linear(inputs, outputs, bias=False)
        linear.weight.data = torch.from_numpy(weight.T.copy())
        runs = {
            "onnxruntime": onnx_matmul(weight, args.threads),
            "pytorch": lambda x, linear=linear: linear(torch.from_numpy(x)),
        }
        with torch.no_grad():
            results = {name: run(x) for name, run in runs.items()}  # warm-up
            difference = float(np.abs(results["onnxruntime"] - results["pytorch"].numpy()).max())
            times = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - start)
        flops = 2 * tokens * inputs * outputs / 1e9
        rates = {name: flops / statistics.median(values) for name, values in times.items()}
        print(
            f"[{tokens} x {inputs}] @ [{inputs} x {outputs}]: onnxruntime {rates['onnxruntime']:.0f} GFLOP/s, "
            f"PyTorch {rates['pytorch']:.0f} GFLOP/s, RATIO {rates['onnxruntime'] / rates['pytorch']:.2f} "
            f"(max |difference| {difference:.2g})"
        )


if __name__ == "__main__":
    main()
