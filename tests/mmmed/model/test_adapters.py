"""The perceiver resampler: shapes, what its queries read, a plain-torch reference, and its place in a run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from mmmed.model.adapters import LinearProjector, MLPProjector, PerceiverResampler, num_output_tokens
from mmmed.train.build import build_run
from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl
from train import train


def resampler(**overrides) -> PerceiverResampler:
    kwargs = dict(in_dim=24, out_dim=40, num_queries=6, depth=2, num_heads=4, hidden_dim=32, ff_mult=2, positional=True)
    return PerceiverResampler(**{**kwargs, **overrides}).eval()


@pytest.mark.parametrize("num_input_tokens", [1, 7, 50])
def test_output_has_num_queries_tokens_whatever_the_encoder_gives(num_input_tokens):
    adapter = resampler()
    out = adapter(torch.randn(3, num_input_tokens, 24))
    assert out.shape == (3, 6, 40) and torch.isfinite(out).all()
    assert num_output_tokens(adapter, num_input_tokens) == 6
    # Per-token projectors keep the encoder's count.
    assert num_output_tokens(LinearProjector(24, 40), num_input_tokens) == num_input_tokens
    assert num_output_tokens(MLPProjector(24, 40), num_input_tokens) == num_input_tokens


def test_every_query_reads_every_input_token_of_its_own_sample_only():
    adapter = resampler()
    tokens = torch.randn(2, 9, 24)
    base = adapter(tokens)
    for i in range(9):
        changed = tokens.clone()
        changed[0, i] += 1.0
        out = adapter(changed)
        # every one of the 6 output tokens of sample 0 moves; sample 1 is untouched
        assert ((out[0] - base[0]).abs().amax(-1) > 1e-4).all(), i
        torch.testing.assert_close(out[1], base[1], rtol=0, atol=0)


def test_token_order_is_invisible_without_positional_codes_and_visible_with_them():
    tokens = torch.randn(2, 9, 24)
    perm = torch.randperm(9)
    assert not torch.equal(perm, torch.arange(9))
    blind = resampler(positional=False)
    torch.testing.assert_close(blind(tokens[:, perm]), blind(tokens), rtol=1e-5, atol=1e-5)
    ordered = resampler(positional=True)
    assert (ordered(tokens[:, perm]) - ordered(tokens)).abs().max() > 1e-2


@pytest.mark.parametrize("hidden_dim", [None, 32])  # None: resample at the encoder's width (no input map)
def test_gradients_reach_every_parameter(hidden_dim):
    adapter = resampler(hidden_dim=hidden_dim).train()
    names = {name for name, _ in adapter.named_parameters()}
    assert ("input_proj.weight" in names) == (hidden_dim is not None)
    adapter(torch.randn(3, 5, 24)).square().mean().backward()
    for name, param in adapter.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_width_that_heads_do_not_divide_is_an_error_naming_the_knobs():
    with pytest.raises(ValueError, match="width 30 is not divisible by num_heads=4; set adapter.hidden_dim"):
        resampler(hidden_dim=30)


# ---- independent reference: the same computation written out with plain tensor ops ----------------


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm uses
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def reference_layer(layer, tokens: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_head)) V per sample and head; keys/values from [tokens; latents]."""
    d = latents.shape[-1]
    heads = layer.num_heads
    d_head = d // heads
    w_q = layer.to_q.weight
    w_k, w_v = layer.to_kv.weight[:d], layer.to_kv.weight[d:]
    out = torch.empty_like(latents)
    for b in range(latents.shape[0]):
        lat = layer_norm(latents[b], layer.norm_latents)  # (Q, d)
        context = torch.cat([layer_norm(tokens[b], layer.norm_tokens), lat])  # (N + Q, d)
        q, k, v = lat @ w_q.T, context @ w_k.T, context @ w_v.T
        merged = []
        for h in range(heads):
            cols = slice(h * d_head, (h + 1) * d_head)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(d_head)  # (Q, N + Q)
            merged.append(torch.softmax(scores, dim=-1) @ v[:, cols])  # (Q, d_head)
        after_attn = latents[b] + torch.cat(merged, dim=1) @ layer.to_out.weight.T
        norm, up, _, down = layer.ff
        out[b] = after_attn + gelu(layer_norm(after_attn, norm) @ up.weight.T) @ down.weight.T
    return out


def test_one_layer_matches_plain_softmax_attention():
    adapter = resampler()
    layer = adapter.layers[0]
    tokens, latents = torch.randn(2, 7, 32), torch.randn(2, 6, 32)
    with torch.no_grad():
        for p in layer.parameters():  # non-trivial norms, so their affine part is checked too
            p.add_(0.1 * torch.randn_like(p))
        torch.testing.assert_close(layer(tokens, latents), reference_layer(layer, tokens, latents), rtol=1e-5, atol=1e-5)


def test_whole_resampler_matches_the_reference_with_sinusoidal_codes():
    adapter = resampler(depth=2)
    tokens = torch.randn(2, 7, 24)
    d = 32
    codes = torch.tensor(
        [[math.sin(n / 10000 ** (j / d)) if j % 2 == 0 else math.cos(n / 10000 ** ((j - 1) / d)) for j in range(d)] for n in range(7)]
    )
    with torch.no_grad():
        x = tokens @ adapter.input_proj.weight.T + adapter.input_proj.bias + codes
        latents = adapter.queries.expand(2, -1, -1)
        for layer in adapter.layers:
            latents = reference_layer(layer, x, latents)
        expected = layer_norm(latents, adapter.norm_out) @ adapter.proj_out.weight.T + adapter.proj_out.bias
        torch.testing.assert_close(adapter(tokens), expected, rtol=1e-5, atol=1e-5)


# ---- in a composed run: the prompt holds num_queries placeholders per ECG, and training works -----


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """The small demo set of tests/test_train.py (30 patients)."""
    return ensure_demo_ptbxl(tmp_path_factory.mktemp("demo") / "ptbxl", num_patients=30, records_per_patient=1, seed=0)


def overrides(demo_root: Path, *extra: str) -> list[str]:
    return [
        f"data.root={demo_root}",
        "data.prepare.num_patients=30",
        "data.prepare.heldout_patients=0",
        "data.prepare.records_per_patient=1",
        "model=tiny",
        "adapter=perceiver",
        "logger=csv",
        *extra,
    ]


def test_built_run_splices_num_queries_tokens_per_ecg(compose, demo_root, tmp_path):
    cfg = compose(overrides(demo_root, "adapter.num_queries=5"), tmp_path)
    assert cfg.modalities.ecg.net.num_tokens == 8  # the encoder's count differs from the queries'
    run = build_run(cfg)
    assert run.formatter.modalities["ecg"].num_tokens == 5
    run.datamodule.prepare_data()
    run.datamodule.setup("fit")
    batch = next(iter(run.datamodule.train_dataloader()))
    model = run.module.model.eval()
    pid = run.formatter.placeholder_ids["ecg"]
    ids = batch["input_ids"]
    assert ((ids == pid).sum(1) == 5).all()  # one ECG per sample, 5 placeholders each
    with torch.no_grad():
        embeds = model.embed(ids, batch["signals"])
        signal = batch["signals"]["ecg"]
        features = model.encoders["ecg"](**signal) if isinstance(signal, dict) else model.encoders["ecg"](signal)
        expected = model.adapters["ecg"](features)  # (B, 5, D)
    assert expected.shape == (ids.shape[0], 5, 64)
    for row in range(ids.shape[0]):
        torch.testing.assert_close(embeds[row, ids[row] == pid], expected[row], rtol=0, atol=0)


def test_tiny_training_run_with_the_perceiver_adapter(compose, demo_root, tmp_path):
    cfg = compose(
        overrides(demo_root, "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
                  "trainer.limit_test_batches=1", "trainer.log_every_n_steps=1"),
        tmp_path / "run",
    )
    assert cfg.adapter.num_queries == 16
    metrics = train(cfg)
    expected = PerceiverResampler(in_dim=128, out_dim=64, num_queries=16, depth=2, num_heads=8)
    assert metrics["params/adapters_trainable"] == sum(p.numel() for p in expected.parameters())
    rows = list(csv.DictReader(open(next((tmp_path / "run" / "csv").rglob("metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert metrics["test/num_scored"] > 0
