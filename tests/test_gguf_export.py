"""Writing merged Llama weights as GGUF for llama.cpp (no llama_cpp needed: read back with gguf.GGUFReader)."""

from __future__ import annotations

import numpy as np
import pytest

from qihuang.errors import ConfigError


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    from qihuang.models.load import load_model, load_tokenizer

    return load_model(str(tiny_llama), dtype="float32"), load_tokenizer(str(tiny_llama))


def _tensors(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    return reader, {t.name: t for t in reader.tensors}


def _array(t):
    return np.array(t.data).reshape([int(x) for x in reversed(t.shape)])


def test_rotary_permutation_is_inverted_exactly():
    from qihuang.models.gguf_export import from_gguf_rotary, to_gguf_rotary

    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)
    moved = to_gguf_rotary(w, heads=4)
    assert not np.array_equal(moved, w)
    assert np.array_equal(from_gguf_rotary(moved, heads=4), w)
    # head 0, first pair: HF row 0 (first half) and row 4 (second half) become adjacent rows 0, 1
    assert np.array_equal(moved[0], w[0]) and np.array_equal(moved[1], w[4])


def test_f32_export_round_trips_names_shapes_and_values(tiny, tmp_path):
    from qihuang.models.gguf_export import export_gguf, from_gguf_rotary, gguf_name

    model, tok = tiny
    out = export_gguf(model, tmp_path / "m.gguf", "f32", tokenizer=tok)
    reader, tensors = _tensors(out)
    cfg = model.config
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to the embedding
    assert sorted(tensors) == sorted(gguf_name(k) for k in state)
    for name, param in state.items():
        got = _array(tensors[gguf_name(name)])
        if ".q_proj." in name:
            got = from_gguf_rotary(got, cfg.num_attention_heads)
        elif ".k_proj." in name:
            got = from_gguf_rotary(got, cfg.num_key_value_heads)
        assert got.shape == tuple(param.shape), name
        assert np.array_equal(got, param.numpy()), name
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.block_count"].contents() == cfg.num_hidden_layers
    assert fields["llama.attention.head_count_kv"].contents() == cfg.num_key_value_heads
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == cfg.vocab_size and tokens[tok.eos_token_id] == tok.eos_token
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tok.eos_token_id


def test_q8_0_export_is_close_and_norms_stay_f32(tiny, tmp_path):
    import gguf

    from qihuang.models.gguf_export import describe, export_gguf

    model, tok = tiny
    out = export_gguf(model, tmp_path / "m.gguf", "q8_0", tokenizer=tok)
    _, tensors = _tensors(out)
    t = tensors["blk.0.ffn_up.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
    deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape(model.model.layers[0].mlp.up_proj.weight.shape)
    ref = model.model.layers[0].mlp.up_proj.weight.detach().numpy()
    assert np.abs(deq - ref).max() <= np.abs(ref).max() / 127 + 1e-6
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert set(describe(out)) == {"Q8_0", "F32"}


def test_source_metadata_is_copied(tiny, tmp_path):
    from qihuang.models.gguf_export import export_gguf

    model, tok = tiny
    first = export_gguf(model, tmp_path / "a.gguf", "f32", tokenizer=tok)
    again = export_gguf(model, tmp_path / "b.gguf", "f16", source=first)
    ra, _ = _tensors(first)
    rb, tb = _tensors(again)
    keys = {k for k in ra.fields if not k.startswith("GGUF.") and k != "general.file_type"}
    assert keys <= set(rb.fields)
    for k in keys:
        assert rb.fields[k].contents() == ra.fields[k].contents(), k
    assert rb.fields["general.file_type"].contents() == 1
    assert tb["blk.0.attn_q.weight"].tensor_type.name == "F16"


def test_unsupported_architectures_are_named(tiny_qwen2, tmp_path):
    from qihuang.models.gguf_export import export_gguf, unsupported
    from qihuang.models.load import load_model, load_tokenizer

    model = load_model(str(tiny_qwen2), dtype="float32")
    assert "qwen2" in unsupported(model, load_tokenizer(str(tiny_qwen2)))
    with pytest.raises(ConfigError, match="qwen2"):
        export_gguf(model, tmp_path / "q.gguf", "f32", tokenizer=load_tokenizer(str(tiny_qwen2)))


def test_bad_type_is_rejected(tiny, tmp_path):
    from qihuang.models.gguf_export import export_gguf

    with pytest.raises(ConfigError, match="q4_k"):
        export_gguf(tiny[0], tmp_path / "x.gguf", "q4_k", tokenizer=tiny[1])


def test_cache_is_keyed_by_adapter_content_and_atomic(tiny, tiny_llama, tmp_path):
    from qihuang.models.gguf_export import cache_key, cached_gguf, gguf_cache_dir

    model, tok = tiny
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"one")
    k1 = cache_key(tiny_llama, adapter, "f32")
    (adapter / "adapter_model.safetensors").write_bytes(b"two")
    k2 = cache_key(tiny_llama, adapter, "f32")
    assert k1 != k2 and k2 != cache_key(tiny_llama, adapter, "q8_0") and k2 != cache_key(tiny_llama, None, "f32")
    path = cached_gguf(model, tiny_llama, adapter, "f32", tokenizer=tok)
    assert path.name == f"{k2}.gguf" and path.parent == gguf_cache_dir()
    stamp = path.stat().st_mtime_ns
    assert cached_gguf(model, tiny_llama, adapter, "f32", tokenizer=tok) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert [p.name for p in gguf_cache_dir().iterdir()] == [path.name]  # no temporary left behind
