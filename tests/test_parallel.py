"""Tensor-parallel load_model (spec/sharding.md): two gloo ranks on CPU give the unsharded model's logits.

The file is written by the test from a tiny random Llama, with a codec mix that exercises every
sharding rule a Llama layer meets: spqr with outliers and 3-bit statistics (q/k/v, cut along out at
multiples of β2), spqr with an act-order permutation (o_proj, block 0's down_proj: cut along stored input columns at
multiples of β1, so those layers all-gather their input), spqr without one (block 1's down_proj: no
gather), squeezellm (gate/up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernel-path test runs the Triton kernels interpreted

import spqrfmt  # noqa: E402
from spqrfmt import Writer, codecs  # noqa: E402
from spqrfmt.model import load_model  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from test_shard import _record, spqr_layout  # noqa: E402
from tp_worker import PROMPT  # noqa: E402

from spqrfmt.codecs import squeezellm  # noqa: E402
from spqrfmt.shard import shard_arrays  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    rng = np.random.default_rng(0)
    spqr, sq = codecs.by_id("spqr"), codecs.by_id("squeezellm")
    opts = spqr.Options(bits=3, group_size=16, scale_bits=3, zero_bits=3, stat_group_size=16, outlier_fraction=0.02)
    path = tmp_path_factory.mktemp("tp") / "tiny.spqr"
    w = Writer(path, metadata={"hf.config": json.dumps(cfg.to_dict())})
    for name, p in model.state_dict().items():
        a = p.detach().float().numpy()
        if name.endswith("proj.weight"):
            a = rng.normal(0, 0.3, a.shape).astype(np.float32)
        if name.endswith("o_proj.weight") or name == "model.layers.0.mlp.down_proj.weight":
            perm = rng.permutation(a.shape[1])
            enc = spqr.encode(np.ascontiguousarray(a[:, perm]), opts)  # stored column j = input feature perm[j]
            enc.sections["perm"] = ("u32", perm.astype(np.uint32))
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            enc = sq.encode(a, sq.Options(bits=3, outlier_fraction=0.01, kmeans_iters=5))
        elif name.endswith("proj.weight"):
            enc = spqr.encode(a, opts)
        else:
            w.add_raw(name, a)
            continue
        w.add_encoded(name, enc, dtype="f32")
    w.close()
    return path


def _torchrun(ranks: int, args: list[str]) -> subprocess.CompletedProcess:
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *launch, *args], capture_output=True, text=True, env=env, timeout=300)


def test_two_gloo_ranks_give_the_unsharded_logits(tiny, tmp_path):
    with spqrfmt.open(tiny) as f:
        perms = [n for n, t in f.items() if "perm" in t.record.sections]
        total = sum(f[n].nbytes for n in f if n.endswith("proj.weight"))
    assert len(perms) == 3  # o_proj of both blocks and block 0's down_proj carry an act-order permutation
    one = load_model(tiny, use_kernels=False)
    with torch.no_grad():
        want = one(torch.tensor(PROMPT)).logits.numpy()
    run = _torchrun(2, [str(HERE / "tp_worker.py"), str(tiny), str(tmp_path / "out")])
    assert run.returncode == 0, run.stdout + run.stderr
    for rank in (0, 1):
        got = np.load(tmp_path / f"out.rank{rank}.npy")
        info = json.loads((tmp_path / f"out.rank{rank}.json").read_text())
        assert info["q_rows"] == 32 and info["o_proj"] == "RowParallelLinear"  # 2 of 4 heads per rank
        assert len(info["sharded"]) == 14  # 7 projections x 2 blocks, each cut
        assert info["gathers"] == 3  # the permuted row-parallel layers all-gather their input, the 4th does not
        assert 0.25 * total < info["bytes_read"] < 0.75 * total  # its half, plus CSR/perm read whole
        # f32 all-reduce: partial sums added in another order than one matmul, so equal to rounding only
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert np.argmax(got, -1).tolist() == np.argmax(want, -1).tolist()
    np.testing.assert_array_equal(np.load(tmp_path / "out.rank0.npy"), np.load(tmp_path / "out.rank1.npy"))


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("codec", ["spqr", "squeezellm"])
def test_kernel_module_of_a_shard_dequantizes_to_its_decode(codec, axis):
    """The use_kernels path: CodecLinear built from a shard (Triton interpreted on CPU; GPUs untested here)."""
    pytest.importorskip("triton")
    from spqrfmt.kernels.linear import CodecLinear

    rng = np.random.default_rng(3)
    if codec == "spqr":
        params = dict(bits=3, group_size=16, scale_bits=3, zero_bits=3, stat_group_size=16)
        rec, arrays = _record("spqr", 1, (64, 64), params, spqr_layout, rng,
                              {"perm": rng.permutation(64).astype(np.uint32)})
    else:
        layout = (squeezellm.checked_params, lambda rec, p: squeezellm.section_layout(rec, p["bits"]))
        rec, arrays = _record("squeezellm", 1, (32, 48), {"bits": 3}, layout, rng)
    s = shard_arrays(rec, arrays, axis, 1, 2)
    lin = CodecLinear.from_codec(codecs.get(s.record), s.params, {k: np.array(v) for k, v in s.arrays.items()},
                                 s.record.shape, "cpu")
    np.testing.assert_array_equal(lin.gpu.dequantize(lin.prepared, torch.float32).numpy(), s.decode())


def test_tp_needs_torch_distributed(tiny):
    with pytest.raises(ValueError, match="init_process_group"):
        load_model(tiny, tp=2, rank=0)


def test_tp_must_divide_the_heads():
    from transformers import LlamaConfig

    from spqrfmt.parallel import check_config

    check_config(LlamaConfig(num_attention_heads=4, num_key_value_heads=2), 2)
    with pytest.raises(ValueError, match="num_key_value_heads = 2"):
        check_config(LlamaConfig(num_attention_heads=4, num_key_value_heads=2), 4)


def test_a_quip_model_is_refused_naming_the_rule(tmp_path):
    """The reference quip encoder's transforms span the whole dimension: the loader refuses, naming the rule."""
    from transformers import LlamaConfig

    from spqrfmt.codecs.sharding import ShardError
    from spqrfmt.model import _resolve, build_empty_model, hf_config
    from spqrfmt.parallel import shard_layers

    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    quip = codecs.by_id("quip")
    w = Writer(tmp_path / "q.spqr", metadata={"hf.config": json.dumps(cfg.to_dict())})
    w.add_encoded("model.layers.0.self_attn.q_proj.weight",
                  quip.encode(np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32), quip.Options(bits=2)))
    w.close()
    with spqrfmt.open(tmp_path / "q.spqr") as f:
        model = build_empty_model(hf_config(f), torch.float32)
        with pytest.raises(ShardError, match="Hadamard of side m stays inside a shard"):
            shard_layers(model, f, lambda n: _resolve(model, n), torch.float32, torch.device("cpu"), False, 2, 0, None)
