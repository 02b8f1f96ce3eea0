"""The animals task: real silhouettes, a real pre-trained text encoder, caption conditioning."""

import gzip
import pickle

import pytest
import torch

from pgraft.tasks.animals import CLASS_NAMES, _NumpyOnly, captions, load_animals_split, pretraining_prompts


def test_real_silhouettes_load_split_and_scaled():
    data = load_animals_split(image_size=16)
    assert data.train_x.shape[1:] == (1, 16, 16) and len(data.train_y) + len(data.test_y) == 10_000
    assert float(data.train_x.min()) == -1.0 and float(data.train_x.max()) <= 1.0
    assert torch.bincount(data.test_y).tolist() == [200] * 10  # stratified 20%


def test_the_data_reader_refuses_anything_but_numpy_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this would run",))

    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as fh:
        pickle.dump(Evil(), fh)
    with gzip.open(path, "rb") as fh, pytest.raises(pickle.UnpicklingError, match="refusing"):
        _NumpyOnly(fh).load()


def test_captions_are_encoded_by_minilm_and_condition_the_unet():
    from pgraft.config import UNetConfig
    from pgraft.models.text_encoder import encode_captions
    from pgraft.models.text_unet import TextConditionalUNet

    texts = captions()
    assert texts[6] == "a silhouette of a giraffe" and texts[-1] == "" and len(texts) == 3 * len(CLASS_NAMES) + 1
    embeds, mask = encode_captions(texts)
    assert embeds.shape[0] == len(texts) and embeds.shape[2] == 384 and mask[:, 0].all()
    # The real encoder separates the animals: a giraffe caption is nearer another giraffe
    # phrasing than a zebra caption (mean-pooled token embeddings).
    pooled = torch.nn.functional.normalize((embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=1)
    giraffe, giraffe2, zebra = pooled[6], pooled[16], pooled[9]
    assert float(giraffe @ giraffe2) > float(giraffe @ zebra)

    torch.manual_seed(0)
    model = TextConditionalUNet.from_config(UNetConfig(block_out_channels=(8, 16), attention=False), 8, embeds, mask)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([500, 500])
    a, b = model(x, t, torch.tensor([6, 6])), model(x, t, torch.tensor([6, 9]))
    assert model.null_label == len(texts) - 1
    torch.testing.assert_close(a[0], b[0])
    assert float((a[1] - b[1]).abs().max()) > 0  # the caption changes the prediction

    prompts = pretraining_prompts(torch.arange(10).repeat(30), seed=0)
    assert set((prompts % 10).tolist()) == set(range(10)) and int(prompts.max()) < 30
