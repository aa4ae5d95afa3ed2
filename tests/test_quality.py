from __future__ import annotations

import pytest
import torch

from robust_envs.quality import LevelsEvaluator, PyIQAEvaluator, QAlignEvaluator, make_evaluator


def test_levels_scorer_prefers_clean_to_degraded_images() -> None:
    from robust_envs.data import load_fashion_mnist

    evaluator = make_evaluator("levels")
    assert isinstance(evaluator, LevelsEvaluator)
    x = load_fashion_mnist("test").float_images()[:200]
    g = torch.Generator().manual_seed(0)
    noisy = (x + 0.4 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    clean_q, noisy_q = evaluator(x), evaluator(noisy)
    assert clean_q.shape == (200,) and clean_q.dtype == torch.float32
    assert ((clean_q >= 1) & (clean_q <= 5)).all()
    assert clean_q.mean() > 4.0 and noisy_q.mean() < 2.0
    # RGB is converted to grey (same score for grey repeated to 3 channels); other sizes are resized to 28 x 28
    torch.testing.assert_close(evaluator(x[:4].repeat(1, 3, 1, 1)), clean_q[:4], atol=1e-4, rtol=0)
    big = evaluator(torch.nn.functional.interpolate(x[:4], size=64))
    assert big.shape == (4,) and ((big >= 1) & (big <= 5)).all()


def test_heldout_scorer_is_a_replicate_with_its_own_weights() -> None:
    """`levels_heldout`: the same recipe with another seed. It ranks clean above noisy images like the embedded
    scorer, agrees with it on which images are better, yet is not the same network (else it checks nothing)."""
    from scipy.stats import spearmanr

    from robust_envs.data import load_fashion_mnist

    main, heldout = make_evaluator("levels"), make_evaluator("levels_heldout")
    assert heldout.name == "levels_heldout" and main.name == "levels"
    x = load_fashion_mnist("test").float_images()[:200]
    std = torch.linspace(0.0, 0.5, 200).view(-1, 1, 1, 1)  # from clean to heavily noised
    mixed = (x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    q_main, q_heldout = main(mixed), heldout(mixed)
    assert q_heldout[:20].mean() > 4.0 and q_heldout[-20:].mean() < 2.0
    assert spearmanr(q_main.numpy(), q_heldout.numpy()).statistic > 0.8
    assert (q_main - q_heldout).abs().max() > 1e-3


def test_evaluator_validates_input() -> None:
    evaluator = make_evaluator("levels")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        evaluator(torch.full((2, 1, 28, 28), 2.0))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        evaluator(torch.rand(2, 2, 28, 28))
    with pytest.raises(ValueError, match=r"float tensor \(N, C, H, W\)"):
        evaluator(torch.rand(28, 28))
    assert evaluator(torch.rand(0, 1, 28, 28)).shape == (0,)


def test_pyiqa_piqe_maps_onto_one_to_five() -> None:
    evaluator = make_evaluator("piqe")
    assert isinstance(evaluator, PyIQAEvaluator) and evaluator.lower_better and evaluator.range == (0.0, 100.0)
    x = torch.rand(3, 1, 32, 32)
    raw = evaluator.metric(x.repeat(1, 3, 1, 1)).reshape(-1)
    expected = (1 + 4 * (1 - raw / 100)).clamp(1, 5)
    torch.testing.assert_close(evaluator(x), expected.float())


def test_unknown_evaluator_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown evaluator 'nope'; valid: 'levels', 'levels_heldout', 'qalign'.*piqe"):
        make_evaluator("nope")


def test_qalign_needs_a_gpu() -> None:
    with pytest.raises(RuntimeError, match="qalign needs a CUDA GPU"):
        QAlignEvaluator(device="cpu")


def test_missing_or_corrupt_scorer_weights(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="train_levels_scorer.py"):
        LevelsEvaluator(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not load levels scorer weights"):
        LevelsEvaluator(tmp_path)
    (tmp_path / "config.json").write_text('{"width": 3')
    with pytest.raises(ValueError, match=r"config\.json: invalid or truncated JSON.*train_levels_scorer\.py"):
        LevelsEvaluator(tmp_path)


# ----------------------------------------------------------------------------------------------- Q-Align (no weights)
def test_qalign_preprocess_resizes_64px_to_448_with_clip_normalisation() -> None:
    from robust_envs.quality.pyiqa_metrics import CLIP_MEAN, CLIP_STD, qalign_preprocess

    grey = torch.full((2, 1, 64, 64), 0.5)
    x = qalign_preprocess(grey)
    assert x.shape == (2, 3, 448, 448) and x.dtype == torch.float16
    expected = torch.tensor([(0.5 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)])
    torch.testing.assert_close(x[0, :, 200, 200].float(), expected, atol=2e-3, rtol=0)
    wide = qalign_preprocess(torch.ones(1, 3, 32, 64), dtype=torch.float32)  # padded to a square with the CLIP mean
    assert wide.shape == (1, 3, 448, 448)
    torch.testing.assert_close(wide[0, :, 2, 224], torch.zeros(3), atol=1e-5, rtol=0)


@pytest.fixture()
def offline_qalign(monkeypatch):
    """QAlignEvaluator up to the weight load: dependencies and cache check pass, the 7B model is a stub."""
    from robust_envs.quality import pyiqa_metrics

    calls: list[tuple[tuple[int, ...], torch.dtype]] = []

    class StubModel(torch.nn.Module):
        def score(self, images, task_="quality", input_="image", image_tensor=None):
            assert images is None and task_ == "quality" and input_ == "image"
            calls.append((tuple(image_tensor.shape), image_tensor.dtype))
            return 1.0 + 4.0 * image_tensor.float().mean(dim=(1, 2, 3)).sigmoid()

    monkeypatch.setattr(pyiqa_metrics, "_require_qalign_deps", lambda: None)
    monkeypatch.setattr(pyiqa_metrics, "_qalign_weights_cached", lambda: True)
    monkeypatch.setattr(pyiqa_metrics.QAlignEvaluator, "_load", staticmethod(lambda device, dtype: StubModel()))
    return calls


def test_qalign_scores_in_batches_of_fp16_448px_images(offline_qalign) -> None:
    evaluator = QAlignEvaluator(device="cpu", allow_cpu=True, batch_size=2)
    scores = evaluator(torch.rand(5, 3, 64, 64))
    assert scores.shape == (5,) and ((scores >= 1) & (scores <= 5)).all()
    assert offline_qalign == [((2, 3, 448, 448), torch.float16)] * 2 + [((1, 3, 448, 448), torch.float16)]


def test_qalign_names_missing_weights_and_dependencies(monkeypatch, tmp_path) -> None:
    import sys

    import huggingface_hub.constants

    from robust_envs.quality import pyiqa_metrics

    monkeypatch.delenv("ROBUST_ENVS_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(pyiqa_metrics, "_require_qalign_deps", lambda: None)
    with pytest.raises(RuntimeError, match=r"q-future/one-align.*not in the local Hugging Face cache.*huggingface-cli"):
        QAlignEvaluator(device="cpu", allow_cpu=True)
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "icecream", None)
    with pytest.raises(ImportError, match=r"icecream.*pip install 'robust-envs\[qalign\]'"):
        QAlignEvaluator(device="cpu", allow_cpu=True)
