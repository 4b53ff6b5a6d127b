"""Retrieval models: metrics, InfoGAN encoder, MiniLM text encoder (ONNX parity), modifications, SynthTriplet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from couturier.export.models.infogan import InfoGANConfig, build_infogan, sample_latent
from couturier.export.models.synthtriplet import (
    Critic,
    QueryGenerator,
    SynthTripletConfig,
    gradient_penalty,
    triplet_loss,
)
from couturier.export.training.data_access import SimpleCatalogue, synthetic_prepared
from couturier.export.training.modifications import FM_TO_GROUP, make_modifications, text_vocabulary
from couturier.export.training.retrieval_eval import precision_at_k, rank_of, recall_at_k, top_k


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """One torch thread: on a shared 2-core machine two OpenMP threads can run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = InfoGANConfig(
    image_size=16, noise_dim=8, n_continuous=2, g_channels=(32, 16, 8), d_channels=(8, 16, 32), q_hidden=16
)


def test_precision_at_k_hand_built() -> None:
    db_labels = np.array([0, 0, 1, 1, 2])
    neighbours = np.array([[0, 2, 1], [4, 3, 2]])  # query 0 has label 0, query 1 label 1
    p = precision_at_k(neighbours, np.array([0, 1]), db_labels, ks=(1, 2, 3))
    assert p == pytest.approx({"p@1": 0.5, "p@2": 0.5, "p@3": (2 / 3 + 2 / 3) / 2})


def test_top_k_rank_and_recall_cosine() -> None:
    db = np.eye(4, dtype=np.float32)
    q = np.array([[0.9, 0.1, 0, 0], [0, 0, 0.2, 0.8]], dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    assert top_k(q, db, 2).tolist() == [[0, 1], [3, 2]]
    ranks = rank_of(q, db, np.array([1, 3]))
    assert ranks.tolist() == [1, 0]
    assert recall_at_k(ranks, (1, 2)) == {"R@1": 0.5, "R@2": 1.0}


def test_infogan_shapes_and_normalised_embedding() -> None:
    gan = build_infogan(TINY)
    latent, cats, cont = sample_latent(TINY, 5, torch.Generator().manual_seed(0))
    assert latent.shape == (5, TINY.latent_dim) and cats.shape == (5,) and cont.shape == (5, 2)
    img = gan.generator.eval()(latent)
    assert img.shape == (5, 3, 16, 16) and img.abs().max() <= 1
    logit, q_cat, q_cont = gan.discriminator.eval()(img)
    assert logit.shape == (5,) and q_cat.shape == (5, 10) and q_cont.shape == (5, 2)
    emb = gan.encoder()(img)
    assert emb.shape == (5, TINY.embed_dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)


def test_the_information_term_trains_the_discriminator_trunk() -> None:
    """Chen et al.: the shared trunk (the retrieval embedding) learns the codes. The D step's gradient on
    the trunk must carry the information term, not only real-vs-fake."""
    from couturier.export.training.profiles import infogan_profile
    from couturier.export.training.train_infogan import discriminator_loss

    gan = build_infogan(TINY)
    G, D = gan.generator.train(), gan.discriminator.train()
    gen = torch.Generator().manual_seed(3)
    real = torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1
    latent, c_cat, c_cont = sample_latent(TINY, 8, gen)
    fake = G(latent)

    def trunk_grads(lambda_cat: float, lambda_cont: float) -> list[torch.Tensor]:
        prof = infogan_profile("demo", lambda_cat=lambda_cat, lambda_cont=lambda_cont)
        torch.manual_seed(0)  # the same dropout/noise draws for both objectives
        loss = discriminator_loss(D, real, fake, c_cat, c_cont, prof)
        return list(torch.autograd.grad(loss, list(D.trunk.parameters())))

    with_info, without = trunk_grads(1.0, 0.1), trunk_grads(0.0, 0.0)
    difference = sum(float((a - b).norm()) for a, b in zip(with_info, without, strict=True))
    scale = sum(float(b.norm()) for b in without)
    assert difference > 0.01 * scale, (difference, scale)
    assert all(p.grad is None for p in G.parameters())  # fakes are detached: D's step never moves G


def test_gradient_penalty_value() -> None:
    class Linear(torch.nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            w = torch.randn(3 * 8 * 8, generator=torch.Generator().manual_seed(0))
            self.w = scale * w / w.norm()

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) @ self.w

    real, fake, text = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8), torch.zeros(6, 4)
    assert gradient_penalty(Linear(1.0), real, fake, text, 10.0).item() == pytest.approx(0.0, abs=1e-8)
    assert gradient_penalty(Linear(2.0), real, fake, text, 10.0).item() == pytest.approx(10.0, rel=1e-5)
    cfg = SynthTripletConfig(image_size=16, channels=(8, 16, 32), critic_channels=(8, 16, 32))
    gp = gradient_penalty(Critic(cfg), torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.randn(4, 384))
    assert gp.item() >= 0 and np.isfinite(gp.item())


def test_triplet_loss_and_generator_shapes() -> None:
    a, p, n = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 1.0]])
    assert triplet_loss(a, p, n, 1.0).item() == pytest.approx(5.0)  # 5 - 1 + 1
    assert triplet_loss(a, n, p, 1.0).item() == 0.0
    cfg = SynthTripletConfig(image_size=16, channels=(8, 16, 32), critic_channels=(8, 16, 32))
    out = QueryGenerator(cfg)(torch.randn(3, 3, 16, 16), torch.randn(3, 384))
    assert out.shape == (3, 3, 16, 16) and out.abs().max() <= 1


def test_modifications_deterministic_and_targets_differ() -> None:
    prep = synthetic_prepared(n=300, n_heldout=30, size=16)
    vocab = text_vocabulary(prep.catalogue)
    assert vocab is not None and vocab.kind_label == "fm_class" and vocab.attribute == "colour"
    names = prep.catalogue.colour_names
    a = make_modifications(prep.heldout, prep.catalogue, vocab, per_reference=3, seed=4)
    b = make_modifications(prep.heldout, prep.catalogue, vocab, per_reference=3, seed=4)
    assert a == b and len(a) > 30
    assert {m.kind for m in a} >= {"attribute", "class_within", "class_across"}
    ref, cat = prep.heldout, prep.catalogue
    for m in a:
        tf, tc = cat.fm_class[m.target], cat.colour[m.target]
        assert (tf, tc) == (m.target_kind, m.target_value)
        if m.kind == "attribute":
            assert tf == ref.fm_class[m.reference] and tc != ref.colour[m.reference]
            assert names[tc] in m.text
        else:
            assert tc == ref.colour[m.reference] and tf != ref.fm_class[m.reference]
            same_group = FM_TO_GROUP[tf] == FM_TO_GROUP[ref.fm_class[m.reference]]
            assert same_group == (m.kind == "class_within")
    self_mods = make_modifications(cat, cat, vocab, per_reference=2)
    assert all(m.target != m.reference for m in self_mods)


def test_text_vocabulary_from_a_shops_attributes() -> None:
    """Real data: categories are the nouns, the dataset's own attribute gives the words; no usable
    attribute -> no vocabulary (so no multimodal model)."""
    prep = synthetic_prepared(n=200, n_heldout=20, size=16)
    cat = prep.catalogue
    rng = np.random.default_rng(0)
    unknown = np.full(len(cat), -1)
    shop = SimpleCatalogue(
        cat.product_ids,
        cat.images,
        cat.category,
        unknown,
        unknown,
        category_names=("boots", "sandals", "slippers", "clogs", "mules", "flats"),
        attributes={"material": rng.integers(0, 3, len(cat)), "sku": np.arange(len(cat))},
        attribute_values={"material": ("leather", "suede", "canvas"), "sku": tuple(map(str, range(len(cat))))},
    )
    vocab = text_vocabulary(shop)
    assert vocab is not None and vocab.kind_label == "category" and vocab.attribute == "material"
    mods = make_modifications(shop, shop, vocab, per_reference=2, seed=1)
    assert mods and {m.kind for m in mods} == {"attribute", "class_across"}
    for m in mods:
        want = vocab.values[m.target_value] if m.kind == "attribute" else vocab.nouns[m.target_kind]
        assert want in m.text
        assert shop.attributes["material"][m.target] == m.target_value
        assert shop.category[m.target] == m.target_kind
    shop.attributes = {"sku": np.arange(len(cat))}  # every value on one product only
    shop.attribute_values = {"sku": tuple(map(str, range(len(cat))))}
    assert text_vocabulary(shop) is None


@pytest.mark.integration
def test_infogan_and_synthtriplet_checkpoint_round_trip(tmp_path: Path) -> None:
    from couturier.export.training.train_infogan import load_infogan, train_infogan
    from couturier.export.training.train_synthtriplet import load_synthtriplet, train_synthtriplet

    prep = synthetic_prepared(n=96, n_heldout=24, size=16)
    m = train_infogan(
        prep,
        tmp_path / "ig",
        "demo",
        steps=3,
        batch_size=16,
        g_channels=(32, 16, 8),
        d_channels=(8, 16, 32),
        max_seconds=None,
    )
    assert m["steps_done"] == 3 and abs(m["embedding_norm_mean"] - 1) < 1e-4
    assert (tmp_path / "ig" / "samples.png").is_file() and (tmp_path / "ig" / "curves.png").is_file()
    gan = load_infogan(tmp_path / "ig")
    x = torch.randn(2, 3, 16, 16)
    again = load_infogan(tmp_path / "ig")
    assert torch.equal(gan.encoder()(x), again.encoder()(x))

    def fake_text(texts: list[str]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        return {t: rng.standard_normal(384).astype(np.float32) for t in sorted(set(texts))}

    s = train_synthtriplet(
        prep,
        tmp_path / "st",
        tmp_path / "ig",
        "demo",
        steps=2,
        batch_size=8,
        channels=(8, 16, 32),
        critic_channels=(8, 16, 32),
        text_fn=fake_text,
        max_seconds=None,
    )
    assert set(s["recall"]) == {"synthetic_image", "image_only", "text_only"}
    for recall in s["recall"].values():  # recall can only grow with K, and the median rank is a rank
        assert recall["R@10"] <= recall["R@50"] and 1 <= recall["median_rank"] <= 96
    G, cfg, extras = load_synthtriplet(tmp_path / "st")
    assert cfg.image_size == 16 and extras["step"] == 2
    assert G(torch.randn(1, 3, 16, 16), torch.randn(1, 384)).shape == (1, 3, 16, 16)


def test_tokenizer_is_torch_free() -> None:
    code = (
        "import sys; from couturier.services.retrieval.text_encoder import Tokenizer; "
        "from couturier.export.models.text_encoder import model_dir; "
        "t = Tokenizer(model_dir() / 'tokenizer.json')(['same but in red', 'make it a sandal']); "
        "assert t['input_ids'].shape == t['attention_mask'].shape and t['input_ids'][0, 0] == 101; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.fixture(scope="module")
def text_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from couturier.export.models.text_encoder import export_text_encoder

    return export_text_encoder(tmp_path_factory.mktemp("text") / "model.onnx")


@pytest.mark.integration
def test_text_encoder_onnx_parity(text_onnx: Path) -> None:
    import onnx

    from couturier.export.models.text_encoder import OnnxTextEncoder, encode_reference

    model = onnx.load(str(text_onnx))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert all(all(dims[name]) for name in ("input_ids", "attention_mask"))  # batch and sequence symbolic
    texts = ["same but in red", "turn it into a coat", "I'd like an ankle boot like this, but a little darker", "x"]
    ours = OnnxTextEncoder(text_onnx)(texts)
    ref = encode_reference(texts)
    assert ours.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.abs(ours - ref).max() < 1e-4
    single = OnnxTextEncoder(text_onnx)(texts[:1])  # different batch and sequence length
    assert np.abs(single[0] - ref[0]).max() < 1e-4


@pytest.mark.integration
def test_retrieval_encoder_and_query_generator_export_to_onnx(tmp_path: Path) -> None:
    from couturier.export.onnx_io import check_parity, export_forward

    enc = build_infogan(TINY).encoder()
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3, 16, 16)).astype(np.float32)
    p = export_forward(
        enc, (torch.from_numpy(x[:2]),), tmp_path / "enc.onnx", input_names=["image"], output_names=["embedding"]
    )
    assert check_parity(enc, p, {"image": x}, rtol=1e-4, atol=1e-5).ok
    cfg = SynthTripletConfig(image_size=16, channels=(8, 16, 32), critic_channels=(8, 16, 32))
    G = QueryGenerator(cfg).eval()
    t = np.random.default_rng(1).standard_normal((3, 384)).astype(np.float32)
    p = export_forward(
        G,
        (torch.from_numpy(x[:2]), torch.from_numpy(t[:2])),
        tmp_path / "gq.onnx",
        input_names=["reference", "text_embedding"],
        output_names=["image"],
    )
    assert check_parity(G, p, {"reference": x[:3], "text_embedding": t}, rtol=1e-4, atol=1e-5).ok
