"""Each reward on known inputs: JPEG sizes ordered as expected, CLIPScore and the aesthetic head
on a tiny random CLIP (finite, right shape, prompt-dependent), the weighted sum, VQAScore's error."""

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from pgraft.errors import RewardError
from pgraft.rewards import (
    AestheticScore,
    CLIPScore,
    VQAScore,
    WeightedSum,
    jpeg_compressibility,
    jpeg_incompressibility,
    score,
)
from pgraft.rewards.clip import AestheticMLP


def _images():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 3, 32, 32), 0.5)
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    noise = torch.rand((1, 3, 32, 32), generator=g)
    return torch.cat([flat, smooth, noise])  # ever harder to compress


def test_jpeg_rewards_order_images_by_their_file_size():
    cond = torch.zeros(3, dtype=torch.long)
    sizes = score(jpeg_incompressibility, _images(), cond)
    assert sizes[0] < sizes[1] < sizes[2]
    torch.testing.assert_close(score(jpeg_compressibility, _images(), cond), -sizes)
    assert score(jpeg_incompressibility, _images()[:, :1], cond).shape == (3,)  # grayscale works


class _Tokenizer:
    """A stand-in word-level tokenizer (tests cannot download CLIP's vocabulary)."""

    def __call__(self, texts, padding=True, truncation=True, return_tensors="pt"):
        ids = [[1 + sum(map(ord, w)) % 90 for w in t.split()][:16] for t in texts]  # deterministic
        n = max(map(len, ids))
        input_ids = torch.tensor([i + [0] * (n - len(i)) for i in ids])
        return _Batch(input_ids=input_ids, attention_mask=(input_ids > 0).long())


class _Batch(dict):
    def to(self, device):
        return _Batch({k: v.to(device) for k, v in self.items()})


def _tiny_clip():
    torch.manual_seed(0)
    text = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=32)  # fmt: skip
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)  # fmt: skip
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))


def test_clip_score_is_finite_per_prompt_and_in_range():
    prompts = ["a red square", "a smooth gradient", "random noise"]
    reward = CLIPScore(_tiny_clip(), _Tokenizer(), prompts)
    images = _images()
    s0 = score(reward, images, torch.tensor([0, 0, 0]))
    s2 = score(reward, images, torch.tensor([2, 2, 2]))
    assert s0.shape == (3,) and torch.isfinite(s0).all() and (s0 >= 0).all() and (s0 <= 100).all()
    # CLIPScore's definition on the reward's own embeddings, and the prompt is read
    for cond, got in ((0, s0), (2, s2)):
        cos = (reward.embed(images) * reward.text[cond]).sum(-1)
        torch.testing.assert_close(got, (100 * cos).clamp(min=0))
    assert not torch.equal(reward.text[0], reward.text[2])
    with pytest.raises(RewardError, match="condition ids"):
        reward(images, torch.tensor([0, 1, 3]))


def test_aesthetic_head_loads_saved_weights_and_scores(tmp_path):
    from safetensors.torch import save_file

    model = _tiny_clip()
    head = AestheticMLP(16)
    save_file(head.state_dict(), str(tmp_path / "head.safetensors"))
    model.save_pretrained(tmp_path / "clip")
    reward = AestheticScore(CLIPModel.from_pretrained(tmp_path / "clip"), head)
    out = score(reward, _images(), torch.zeros(3, dtype=torch.long))
    assert out.shape == (3,) and torch.isfinite(out).all()
    expected = head(reward.embed(_images())).squeeze(-1)
    torch.testing.assert_close(out, expected)
    with pytest.raises(RewardError, match="not found"):
        AestheticScore.from_pretrained(tmp_path / "clip", tmp_path / "missing.pth")
    with pytest.raises(RewardError, match="not a CLIP model folder"):
        AestheticScore.from_pretrained(tmp_path, tmp_path / "head.safetensors")


def test_weighted_sum_combines_terms():
    images, cond = _images(), torch.zeros(3, dtype=torch.long)
    both = WeightedSum([(2.0, jpeg_incompressibility), (0.5, jpeg_compressibility)])
    torch.testing.assert_close(score(both, images, cond), 1.5 * score(jpeg_incompressibility, images, cond))
    with pytest.raises(RewardError):
        WeightedSum([])


def test_vqascore_without_its_extra_names_the_extra():
    pytest.importorskip("pgraft")
    try:
        import t2v_metrics  # noqa: F401
    except ImportError:
        with pytest.raises(RewardError, match=r"pgraft\[vqascore\]"):
            VQAScore(["a cat"])
    else:
        pytest.skip("t2v_metrics is installed here")


def test_overlapped_scorer_returns_chunks_in_order_and_reraises():
    from pgraft.engine.scoring import OverlappedScorer

    scorer = OverlappedScorer(lambda img, c: img.mean(dim=(1, 2, 3)) + c, lambda x: x.clamp(0, 1))
    chunks = [torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for i, x in enumerate(chunks):
        scorer.submit(x, torch.full((4,), float(i)))
    images, rewards = scorer.results((1, 2, 2))
    torch.testing.assert_close(images, torch.cat(chunks))
    torch.testing.assert_close(rewards, torch.cat([x.mean(dim=(1, 2, 3)) + i for i, x in enumerate(chunks)]))

    bad = OverlappedScorer(lambda img, c: img.mean(dim=(2, 3)), lambda x: x)  # [B, 1]: breaks the signature
    bad.submit(torch.rand(2, 1, 2, 2), torch.zeros(2))
    with pytest.raises(RewardError, match="shape"):
        bad.results((1, 2, 2))
