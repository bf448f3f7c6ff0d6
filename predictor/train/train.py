#!/usr/bin/env python3
"""Train augur's ONNX sequence model from trace files.

    python3 predictor/train/train.py --augur target/release/augur \
        --traces loadtests/traces/demo.jsonl --out predictor/models/demo.onnx

    python3 predictor/train/train.py --arch transformer ...

The call sequences come from `augur export-sequences`, so calls are named
exactly as augur names them. Two architectures share the inputs (the route,
a start marker and the shapes so far, left-padded to `--window`) and the
two heads (the next token — a shape or the end — and the log latency of
that call):

* `lstm`: an embedding and one LSTM layer, written as a native ONNX LSTM
  node;
* `transformer`: an embedding with learned positions, one encoder layer
  (single-head self-attention that ignores padding, a feed-forward block,
  each with a residual and a layer norm), read at the last position.

Both may also read fields of what the context holds (the inbound request,
the responses so far: `--features N`, chosen by `augur export-sequences`
for what they tell of the next call beyond the history, and read by augur
exactly as it wrote them). They enter beside the sequence's summary: the
next token comes from relu([h, features] · W + b), so a call decided by
two fields together, or by a field and the history, is learned.

The model is written with its vocabulary in its metadata (`augur.vocab`)
and checked with ONNX Runtime against JAX; the inputs and outputs of that
check are written beside it (`.check.json`) so that the Rust side can prove
it computes the same numbers.
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


def load(augur, traces, features, train_fraction):
    out = subprocess.run(
        [augur, "export-sequences", "--features", str(features), "--train-fraction", str(train_fraction), *traces],
        check=True, capture_output=True, text=True)
    if out.stderr:
        sys.stderr.write(out.stderr)
    return json.loads(out.stdout)


def examples(data, window):
    """Windows of tokens, the fields' numbers, the next token, and its log
    latency (NaN: none).

    A step is seen twice when the context read fields: with what was known
    when its call started, and with what was known when the call before it
    started (that call's answer still in flight, as augur asks then too),
    so the network learns to be unsure until the fields that decide arrive."""
    routes, shapes = len(data["routes"]), len(data["shapes"])
    n_features = len(data.get("features", []))
    shape_offset = OFFSET + routes
    xs, fs, ys, lat = [], [], [], []
    for seq in data["sequences"]:
        tokens = [OFFSET + seq["route"], START] + [shape_offset + s for s in seq["shapes"]]
        rows = seq.get("features") or [[0.0] * n_features] * (len(seq["shapes"]) + 1)
        for t in range(len(seq["shapes"]) + 1):
            prefix = tokens[: t + 2][-window:]
            window_tokens = [PAD] * (window - len(prefix)) + prefix
            if t < len(seq["shapes"]):
                y, l = shape_offset + seq["shapes"][t], np.log1p(seq["latencies_us"][t])
            else:
                y, l = END, np.nan
            known = [rows[t]] + ([rows[t - 1]] if n_features and t > 0 and rows[t - 1] != rows[t] else [])
            for f in known:
                xs.append(window_tokens)
                fs.append(f)
                ys.append(y)
                lat.append(l)
    vocab = shape_offset + shapes
    return (np.array(xs, np.int64), np.array(fs, np.float32).reshape(len(xs), n_features),
            np.array(ys, np.int32), np.array(lat, np.float32), vocab)


def init_mix(key, width, features):
    """The head that reads the fields beside the sequence's summary `h`."""
    if not features:
        return {}
    return {
        "mix_W": jax.random.normal(key, (width + features, width)) / np.sqrt(width + features),
        "mix_b": jnp.zeros((width,)),
    }


def head(p, h, features):
    """The next-token distribution and the log latency from the summary."""
    z = jax.nn.relu(jnp.concatenate([h, features], axis=-1) @ p["mix_W"] + p["mix_b"]) if "mix_W" in p else h
    return jax.nn.softmax(z @ p["out_W"] + p["out_b"], axis=-1), h @ p["lat_W"] + p["lat_b"]


def head_nodes(p):
    """`head` as ONNX nodes, from `h` and `features` to the two outputs."""
    n = helper.make_node
    nodes = []
    z = "h"
    if "mix_W" in p:
        nodes += [
            n("Concat", ["h", "features"], ["hf"], axis=-1),
            n("MatMul", ["hf", "mix_W"], ["mix0"]),
            n("Add", ["mix0", "mix_b"], ["mix1"]),
            n("Relu", ["mix1"], ["z"]),
        ]
        z = "z"
    return nodes + [
        n("MatMul", [z, "out_W"], ["logits0"]),
        n("Add", ["logits0", "out_b"], ["logits"]),
        n("Softmax", ["logits"], ["probs"], axis=-1),
        n("MatMul", ["h", "lat_W"], ["lat0"]),
        n("Add", ["lat0", "lat_b"], ["log_latency"]),
    ]


def init_transformer(key, vocab, window, embed, hidden, features):
    k = jax.random.split(key, 11)
    g = lambda i, shape, scale: jax.random.normal(k[i], shape) * scale
    s = 1.0 / np.sqrt(embed)
    return {
        "emb": g(0, (vocab, embed), 0.1),
        "pos": g(1, (window, embed), 0.1),
        "Wq": g(2, (embed, embed), s),
        "Wk": g(3, (embed, embed), s),
        "Wv": g(4, (embed, embed), s),
        "Wo": g(5, (embed, embed), s),
        "ln1_s": jnp.ones((embed,)),
        "ln1_b": jnp.zeros((embed,)),
        "ff_W1": g(6, (embed, hidden), s),
        "ff_b1": jnp.zeros((hidden,)),
        "ff_W2": g(7, (hidden, embed), 1.0 / np.sqrt(hidden)),
        "ff_b2": jnp.zeros((embed,)),
        "ln2_s": jnp.ones((embed,)),
        "ln2_b": jnp.zeros((embed,)),
        "out_W": g(8, (embed, vocab), 0.1),
        "out_b": jnp.zeros((vocab,)),
        "lat_W": g(9, (embed, 1), 0.1),
        "lat_b": jnp.full((1,), 8.0),
    } | init_mix(k[10], embed, features)


def layer_norm(x, scale, bias, eps=1e-5):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def forward_transformer(p, tokens, features):
    """Exactly what the exported ONNX graph computes."""
    embed = p["Wq"].shape[0]
    x = p["emb"][tokens] + p["pos"]  # [N, T, E]
    q, k, v = x @ p["Wq"], x @ p["Wk"], x @ p["Wv"]
    scores = q @ jnp.swapaxes(k, 1, 2) / np.float32(np.sqrt(embed))  # [N, T, T]
    pad = (tokens == PAD).astype(jnp.float32) * np.float32(-1e9)  # [N, T]
    att = jax.nn.softmax(scores + pad[:, None, :], axis=-1) @ v
    h = layer_norm(x + att @ p["Wo"], p["ln1_s"], p["ln1_b"])
    ff = jax.nn.relu(h @ p["ff_W1"] + p["ff_b1"]) @ p["ff_W2"] + p["ff_b2"]
    h = layer_norm(h + ff, p["ln2_s"], p["ln2_b"])[:, -1, :]  # the last position
    return head(p, h, features)


def init(key, vocab, embed, hidden, features):
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
    } | init_mix(k[5], hidden, features)


def forward(p, tokens, features):
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
    return head(p, h, features)


def loss(p, x, f, y, lat, forward=None):
    probs, log_latency = forward(p, x, f)
    ce = -jnp.mean(jnp.log(probs[jnp.arange(y.shape[0]), y] + 1e-9))
    mask = ~jnp.isnan(lat)
    err = jnp.where(mask, log_latency[:, 0] - jnp.nan_to_num(lat), 0.0)
    return ce + 0.1 * jnp.sum(err**2) / jnp.maximum(mask.sum(), 1)


def export_transformer(p, window, data, path):
    a = {k: np.asarray(v, np.float32) for k, v in p.items()}
    embed = a["Wq"].shape[0]
    inits = [numpy_helper.from_array(v, k) for k, v in a.items()]
    inits += [
        numpy_helper.from_array(np.array(np.sqrt(embed), np.float32), "scale"),
        numpy_helper.from_array(np.array(-1e9, np.float32), "neg"),
        numpy_helper.from_array(np.array(PAD, np.int64), "pad"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(window - 1, np.int64), "last"),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "tokens"], ["e"]),
        n("Add", ["e", "pos"], ["x"]),
        n("MatMul", ["x", "Wq"], ["q"]),
        n("MatMul", ["x", "Wk"], ["k"]),
        n("MatMul", ["x", "Wv"], ["v"]),
        n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["qk"]),
        n("Div", ["qk", "scale"], ["scores0"]),
        n("Equal", ["tokens", "pad"], ["is_pad"]),
        n("Cast", ["is_pad"], ["pad_f"], to=TensorProto.FLOAT),
        n("Mul", ["pad_f", "neg"], ["pad_add0"]),
        n("Unsqueeze", ["pad_add0", "axis1"], ["pad_add"]),
        n("Add", ["scores0", "pad_add"], ["scores"]),
        n("Softmax", ["scores"], ["weights"], axis=-1),
        n("MatMul", ["weights", "v"], ["att"]),
        n("MatMul", ["att", "Wo"], ["att_o"]),
        n("Add", ["x", "att_o"], ["r1"]),
        n("LayerNormalization", ["r1", "ln1_s", "ln1_b"], ["h1"], axis=-1, epsilon=1e-5),
        n("MatMul", ["h1", "ff_W1"], ["f0"]),
        n("Add", ["f0", "ff_b1"], ["f1"]),
        n("Relu", ["f1"], ["f2"]),
        n("MatMul", ["f2", "ff_W2"], ["f3"]),
        n("Add", ["f3", "ff_b2"], ["f4"]),
        n("Add", ["h1", "f4"], ["r2"]),
        n("LayerNormalization", ["r2", "ln2_s", "ln2_b"], ["h2"], axis=-1, epsilon=1e-5),
        n("Gather", ["h2", "last"], ["h"], axis=1),
    ] + head_nodes(a)
    save(nodes, inits, "augur_sequence_transformer", window, data, path)


def save(nodes, inits, name, window, data, path):
    vocab = OFFSET + len(data["routes"]) + len(data["shapes"])
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", window])]
    fields = data.get("features", [])
    if fields:
        inputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", len(fields)]))
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", vocab]),
            helper.make_tensor_value_info("log_latency", TensorProto.FLOAT, ["batch", 1]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="augur-train")
    model.ir_version = 8
    meta = {"window": window, "routes": data["routes"], "shapes": data["shapes"]}
    props = {"augur.vocab": json.dumps(meta)}
    if fields:
        props["augur.features"] = json.dumps(fields)
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, path)


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
    ] + [numpy_helper.from_array(a[k], k) for k in ("mix_W", "mix_b") if k in a]
    nodes = [
        helper.make_node("Gather", ["emb", "tokens"], ["x"]),
        helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["x_t", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden),
        helper.make_node("Squeeze", ["Y_h", "axis0"], ["h"]),
    ] + head_nodes(a)
    save(nodes, inits, "augur_sequence_lstm", window, data, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--augur", required=True, help="the augur binary (for export-sequences)")
    ap.add_argument("--traces", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--arch", choices=["lstm", "transformer"], default="lstm")
    ap.add_argument("--window", type=int, default=12)
    ap.add_argument("--embed", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--train-fraction", type=float, default=0.5,
                    help="train on this first share of the contexts (augur eval measures the rest)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", type=int, default=32,
                    help="fields of the context the model reads beside the history (0: none)")
    args = ap.parse_args()

    data = load(args.augur, args.traces, args.features, args.train_fraction)
    cut = int(round(len(data["sequences"]) * args.train_fraction))
    train = dict(data, sequences=data["sequences"][:cut])
    x, f, y, lat, vocab = examples(train, args.window)
    n_features = f.shape[1]
    print(f"{len(data['sequences'])} contexts, training on {cut}: {len(x)} examples, "
          f"vocabulary {vocab}, {n_features} fields")

    key = jax.random.PRNGKey(args.seed)
    if args.arch == "lstm":
        params, fwd, write = init(key, vocab, args.embed, args.hidden, n_features), forward, export
    else:
        params = init_transformer(key, vocab, args.window, args.embed, args.hidden, n_features)
        fwd, write = forward_transformer, export_transformer
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def update(p, s, x, f, y, lat):
        value, grads = jax.value_and_grad(loss)(p, x, f, y, lat, fwd)
        updates, s = opt.update(grads, s)
        return optax.apply_updates(p, updates), s, value

    for step in range(args.steps):
        params, state, value = update(params, state, x, f, y, lat)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {float(value):.4f}")

    write(params, args.window, data, args.out)
    # Check with ONNX Runtime against JAX, and keep the numbers for Rust.
    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(args.seed)
    probe = np.concatenate([x[:16], rng.integers(0, vocab, (4, args.window))]).astype(np.int64)
    probe_f = np.concatenate([f[:16], rng.integers(0, 2, (4, n_features))]).astype(np.float32)
    feeds = {"tokens": probe} | ({"features": probe_f} if n_features else {})
    probs, log_latency = sess.run(["probs", "log_latency"], feeds)
    jp, jl = fwd(params, jnp.asarray(probe), jnp.asarray(probe_f))
    diff = max(np.abs(probs - np.asarray(jp)).max(), np.abs(log_latency - np.asarray(jl)).max())
    print(f"ONNX Runtime vs JAX: max abs difference {diff:.2e}")
    if diff > 1e-4:
        sys.exit(f"exported model disagrees with the trained one ({diff})")
    check = {"tokens": probe.tolist(), "probs": probs.tolist(), "log_latency": log_latency.tolist()}
    if n_features:
        check["features"] = probe_f.tolist()
    with open(args.out.removesuffix(".onnx") + ".check.json", "w") as f:
        json.dump(check, f)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
