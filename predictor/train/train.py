#!/usr/bin/env python3
"""Train augur's ONNX sequence model from trace files.

    python3 predictor/train/train.py --augur target/release/augur \
        --traces loadtests/traces/demo.jsonl --out predictor/models/demo.onnx

The call sequences come from `augur export-sequences`, so calls are named
exactly as augur names them. The model is an embedding, one LSTM layer and
two heads: the next token (a shape or the end) and the log latency of that
call. It is written as a native ONNX LSTM node, with its vocabulary in the
model's metadata (`augur.vocab`), and checked with ONNX Runtime; the inputs
and outputs of that check are written beside it (`.check.json`) so that the
Rust side can prove it computes the same numbers.
"""

import argparse
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import optax
from onnx import TensorProto, helper, numpy_helper

PAD, START, END, UNK = 0, 1, 2, 3
OFFSET = 4


def load(augur, traces):
    out = subprocess.run([augur, "export-sequences", *traces], check=True, capture_output=True, text=True)
    if out.stderr:
        sys.stderr.write(out.stderr)
    return json.loads(out.stdout)


def examples(data, window):
    """Windows of tokens, the next token, and its log latency (NaN: none)."""
    routes, shapes = len(data["routes"]), len(data["shapes"])
    shape_offset = OFFSET + routes
    xs, ys, lat = [], [], []
    for seq in data["sequences"]:
        tokens = [OFFSET + seq["route"], START] + [shape_offset + s for s in seq["shapes"]]
        for t in range(len(seq["shapes"]) + 1):
            prefix = tokens[: t + 2][-window:]
            xs.append([PAD] * (window - len(prefix)) + prefix)
            if t < len(seq["shapes"]):
                ys.append(shape_offset + seq["shapes"][t])
                lat.append(np.log1p(seq["latencies_us"][t]))
            else:
                ys.append(END)
                lat.append(np.nan)
    vocab = shape_offset + shapes
    return np.array(xs, np.int64), np.array(ys, np.int32), np.array(lat, np.float32), vocab


def init(key, vocab, embed, hidden):
    k = jax.random.split(key, 6)
    s = 1.0 / np.sqrt(hidden)
    return {
        "emb": jax.random.normal(k[0], (vocab, embed)) * 0.1,
        # ONNX LSTM layout, gates in the order i, o, f, c.
        "W": jax.random.uniform(k[1], (4 * hidden, embed), minval=-s, maxval=s),
        "R": jax.random.uniform(k[2], (4 * hidden, hidden), minval=-s, maxval=s),
        "B": jnp.zeros((8 * hidden,)),
        "out_W": jax.random.normal(k[3], (hidden, vocab)) * 0.1,
        "out_b": jnp.zeros((vocab,)),
        "lat_W": jax.random.normal(k[4], (hidden, 1)) * 0.1,
        "lat_b": jnp.full((1,), 8.0),
    }


def forward(p, tokens):
    """Exactly what the exported ONNX graph computes."""
    hidden = p["R"].shape[1]
    x = p["emb"][tokens]  # [N, T, E]
    wb, rb = p["B"][: 4 * hidden], p["B"][4 * hidden :]

    def step(carry, xt):
        h, c = carry
        g = xt @ p["W"].T + wb + h @ p["R"].T + rb
        i, o, f, cc = jnp.split(g, 4, axis=-1)
        i, o, f, cc = jax.nn.sigmoid(i), jax.nn.sigmoid(o), jax.nn.sigmoid(f), jnp.tanh(cc)
        c = f * c + i * cc
        h = o * jnp.tanh(c)
        return (h, c), None

    n = tokens.shape[0]
    zeros = jnp.zeros((n, hidden))
    (h, _), _ = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(x, 0, 1))
    logits = h @ p["out_W"] + p["out_b"]
    return jax.nn.softmax(logits, axis=-1), h @ p["lat_W"] + p["lat_b"]


def loss(p, x, y, lat):
    probs, log_latency = forward(p, x)
    ce = -jnp.mean(jnp.log(probs[jnp.arange(y.shape[0]), y] + 1e-9))
    mask = ~jnp.isnan(lat)
    err = jnp.where(mask, log_latency[:, 0] - jnp.nan_to_num(lat), 0.0)
    return ce + 0.1 * jnp.sum(err**2) / jnp.maximum(mask.sum(), 1)


def export(p, window, data, path):
    hidden = p["R"].shape[1]
    a = {k: np.asarray(v, np.float32) for k, v in p.items()}
    inits = [
        numpy_helper.from_array(a["emb"], "emb"),
        numpy_helper.from_array(a["W"][None], "W"),
        numpy_helper.from_array(a["R"][None], "R"),
        numpy_helper.from_array(a["B"][None], "B"),
        numpy_helper.from_array(a["out_W"], "out_W"),
        numpy_helper.from_array(a["out_b"], "out_b"),
        numpy_helper.from_array(a["lat_W"], "lat_W"),
        numpy_helper.from_array(a["lat_b"], "lat_b"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "tokens"], ["x"]),
        helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["x_t", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden),
        helper.make_node("Squeeze", ["Y_h", "axis0"], ["h"]),
        helper.make_node("MatMul", ["h", "out_W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "out_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["h", "lat_W"], ["lat0"]),
        helper.make_node("Add", ["lat0", "lat_b"], ["log_latency"]),
    ]
    vocab = OFFSET + len(data["routes"]) + len(data["shapes"])
    graph = helper.make_graph(
        nodes,
        "augur_sequence_lstm",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", window])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", vocab]),
            helper.make_tensor_value_info("log_latency", TensorProto.FLOAT, ["batch", 1]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="augur-train")
    model.ir_version = 8
    meta = {"window": window, "routes": data["routes"], "shapes": data["shapes"]}
    helper.set_model_props(model, {"augur.vocab": json.dumps(meta)})
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--augur", required=True, help="the augur binary (for export-sequences)")
    ap.add_argument("--traces", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--window", type=int, default=12)
    ap.add_argument("--embed", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--train-fraction", type=float, default=0.5,
                    help="train on this first share of the contexts (augur eval measures the rest)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = load(args.augur, args.traces)
    cut = int(round(len(data["sequences"]) * args.train_fraction))
    train = dict(data, sequences=data["sequences"][:cut])
    x, y, lat, vocab = examples(train, args.window)
    print(f"{len(data['sequences'])} contexts, training on {cut}: {len(x)} examples, vocabulary {vocab}")

    params = init(jax.random.PRNGKey(args.seed), vocab, args.embed, args.hidden)
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def update(p, s, x, y, lat):
        value, grads = jax.value_and_grad(loss)(p, x, y, lat)
        updates, s = opt.update(grads, s)
        return optax.apply_updates(p, updates), s, value

    for step in range(args.steps):
        params, state, value = update(params, state, x, y, lat)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {float(value):.4f}")

    export(params, args.window, data, args.out)
    # Check with ONNX Runtime against JAX, and keep the numbers for Rust.
    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    probe = np.concatenate([x[:16], np.random.default_rng(args.seed).integers(0, vocab, (4, args.window))]).astype(np.int64)
    probs, log_latency = sess.run(["probs", "log_latency"], {"tokens": probe})
    jp, jl = forward(params, jnp.asarray(probe))
    diff = max(np.abs(probs - np.asarray(jp)).max(), np.abs(log_latency - np.asarray(jl)).max())
    print(f"ONNX Runtime vs JAX: max abs difference {diff:.2e}")
    if diff > 1e-4:
        sys.exit(f"exported model disagrees with the trained one ({diff})")
    check = {"tokens": probe.tolist(), "probs": probs.tolist(), "log_latency": log_latency.tolist()}
    with open(args.out.removesuffix(".onnx") + ".check.json", "w") as f:
        json.dump(check, f)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
