"""The main job's report renderer and its model bookkeeping, on small synthetic inputs (no services, no training).

The demo itself (``couturier demo``) needs trained models and a local Triton; it is run by hand or by
``make demo``. What is checked here: every section renders, images are embedded and decode, the
simulated-data notice is there, failures show up, and the train/export/publish decisions.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from couturier.export.pipeline import NETWORKS, USER_VECTORS
from couturier.export.tools.demo import (
    Locations,
    Stages,
    ensure_models,
    export_reasons,
    precision_rows,
    publish_reasons,
    training_reasons,
    write_report,
)
from couturier.export.tools.demo_report import (
    SECTIONS,
    SIMULATED_NOTICE,
    alter_chart_series,
    json_ready,
    render_html,
    render_markdown,
    svg_line_chart,
)
from couturier.export.tools.demo_results import (
    AlterationTrajectory,
    AlterFrame,
    CategoryPrecision,
    DataSummary,
    DemoResults,
    Dependency,
    Design,
    DesignRun,
    Designs,
    ImageSearch,
    ImageSearchExample,
    Indexing,
    IndexSide,
    Item,
    ModelsSummary,
    MultimodalQuery,
    MultimodalSearches,
    NewShopperRecommendations,
    Recommendations,
    SearchPrecision,
    SellerVariant,
    SellerVariants,
    ServiceDiagnostics,
    Timings,
    TrainedShopperRecommendations,
)
from couturier.export.training.common import CHECKPOINT
from couturier.services.common.images import encode_png
from couturier.services.common.loop_specs import LOOP_SPECS
from couturier.services.common.models import ALL_MODELS, CATEGORY_MODELS, ITEM_ENCODER
from support.onnx_models import linear_model, with_categories

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _item(n: int, **extra: Any) -> Item:
    return Item(
        **{"product_id": f"fm-train-{n:06d}", "category": "dresses", "colour": "red", "image": _png(n), **extra}
    )


def synthetic_results() -> DemoResults:
    """Small results with every section the demo fills."""
    frames = [
        AlterFrame(
            phase="INVERSION", step=s, image=_png(100 + s), reconstruction_loss=0.4 / (1 + s), preference=2.0 + 0.01 * s
        )
        for s in (0, 20, 40)
    ]
    frames += [
        AlterFrame(phase="OPTIMIZATION", step=s, image=_png(200 + s), objective=3.0 + s / 10, preference=3.0 + s / 10)
        for s in (0, 20)
    ]
    frames.append(AlterFrame(phase="DONE", step=20, image=_png(300), preference=5.0, objective=5.0))
    design = Design(
        image=_png(7),
        objective=4.2,
        preference_before=1.0,
        preference_after=4.2,
        realism=0.7,
        products=[_item(8, preference=3.1, similarity=0.91), _item(9, preference=2.5, similarity=0.88)],
    )
    return DemoResults(
        profile="demo",
        data_dir="var/data",
        generated_at="2026-11-23T16:00:00+00:00",
        data=DataSummary(catalogue_items=10, heldout_items=2, users=3, categories=["dresses"], colours=["red"]),
        models=ModelsSummary(
            run_dir="runs/demo",
            training_reason="checkpoints found",
            publish_reason="nothing published",
            versions={"item_encoder": "1"},
            user_vectors="v1.npz",
        ),
        timings=Timings(
            stages_s={"data": 0.1, "stack": 5.0, "total": 30.0}, calls_ms={"Recommend (trained shopper)": 12.5}
        ),
        indexing=Indexing(
            items=10,
            seconds=0.5,
            items_per_s=20.0,
            per_category={"dresses": 10},
            scoring=IndexSide(upserted=10, total=10, encoder="item_encoder v1"),
            retrieval=IndexSide(upserted=10, total=10, encoder="retrieval_encoder v1"),
        ),
        recommend=Recommendations(
            user=TrainedShopperRecommendations(
                user_id="sim-user-00001",
                purchases=[_item(1)],
                n_purchases=1,
                products=[_item(2, preference=5.0)],
                model="item_encoder v1",
                folded_in=False,
                latency_ms=12.5,
                share_bought_category=1.0,
            ),
            new_user=NewShopperRecommendations(
                user_id="new-shopper",
                liked=[_item(3)],
                liked_colour="red",
                liked_category="dresses",
                products=[_item(4, preference=1.0)],
                folded_in=True,
                latency_ms=3.0,
                share_same_colour=1.0,
                share_same_category=1.0,
            ),
        ),
        design=Designs(
            user=DesignRun(
                title="Designs for one",
                audience="shopper x",
                category="dresses",
                steps=50,
                objective_name="mean preference",
                designs=[design],
                latency_ms=300.0,
            ),
            group=DesignRun(
                title="Designs for a group",
                audience="20 shoppers",
                category="shoes",
                top_k=10,
                median_threshold=7.5,
                objective_name="TOP_K_SHARE",
                designs=[design],
                latency_ms=900.0,
            ),
        ),
        alter=AlterationTrajectory(
            user_id="sim-user-00001",
            product=_item(5),
            frames=frames,
            latency_ms=900.0,
            first_message_ms=40.0,
            preference_original=2.1,
            preference_inverted=2.4,
            preference_final=5.0,
            reconstruction_loss_final=0.01,
        ),
        seller=SellerVariants(
            product=_item(6),
            users=["sim-user-00002"],
            audience="30 shoppers",
            settings="n=4",
            latency_ms=700.0,
            base_image=_png(400),
            base_preference=-0.8,
            original_preference=-0.9,
            item_competitors=[_item(10, similarity=0.9)],
            variants=[
                SellerVariant(
                    image=_png(401),
                    preference_before=-0.8,
                    preference_after=-0.3,
                    preference_shift=0.5,
                    opposite_ssim=0.1,
                    shift_norm=1.0,
                    competitors=[_item(11, similarity=0.8)],
                )
            ],
        ),
        multimodal=MultimodalSearches(
            user_id="sim-user-00001",
            queries=[
                MultimodalQuery(
                    text="same but in red",
                    requested_colour="red",
                    query=_item(12, colour="cream"),
                    synthetic_image=_png(500),
                    hits=[_item(13, similarity=0.9, preference=2.0)],
                    latency_ms=80.0,
                    share_requested_colour=1.0,
                    share_same_category=1.0,
                )
            ],
        ),
        search=ImageSearch(
            examples=[ImageSearchExample(query=_item(14), hits=[_item(15, similarity=0.95)], latency_ms=20.0)],
            precision=SearchPrecision(
                queries=100,
                k=10,
                category=0.8,
                colour=0.9,
                fm_class=0.6,
                median_ms=25.0,
                p90_ms=50.0,
                chance_category=0.2,
                chance_colour=0.1,
                per_category={"dresses": CategoryPrecision(category=0.8, colour=0.9, queries=10)},
            ),
        ),
        services={
            "scoring": ServiceDiagnostics(
                target="127.0.0.1:1",
                serving=True,
                version="0.1.0",
                exit_code=0,
                dependencies=[Dependency(name="model", ready=True, detail="item_encoder v1")],
                settings={"inference_backend": "triton"},
                reflection=["couturier.v1.ScoringService"],
            )
        },
        served_models={"scoring Recommend": "item_encoder v1"},
    )


def _count_images(value: Any) -> int:
    if dataclasses.is_dataclass(value):
        return _count_images(dataclasses.asdict(value))
    if isinstance(value, bytes):
        return 1
    if isinstance(value, dict):
        return sum(_count_images(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count_images(v) for v in value)
    return 0


def test_html_has_every_section_the_notice_and_decodable_inline_images() -> None:
    results = synthetic_results()
    page = render_html(results)
    for section_id, title in SECTIONS:
        assert f'<section id="{section_id}">' in page
        assert title in page
    assert SIMULATED_NOTICE in page
    assert "SIMULATED" in page and "Fashion-MNIST" in page
    images = DATA_URI.findall(page)
    assert len(images) == _count_images(results)  # every image of the results, inline
    for encoded in images:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            assert image.format == "PNG" and image.size == (32, 32)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    assert "<svg" in page  # the Alter chart
    assert "This part failed" not in page


def test_failed_sections_and_missing_parts_are_shown() -> None:
    results = synthetic_results()
    results.seller = None
    results.add_error("seller", "SellerFeedback: UNAVAILABLE: latent down")
    page = render_html(results)
    section = page.split('<section id="seller">')[1].split("</section>")[0]
    assert "This part failed" in section and "UNAVAILABLE: latent down" in section
    empty = render_html(DemoResults())  # nothing collected still renders every heading
    assert all(f'<section id="{sid}">' in empty for sid, _ in SECTIONS)


def test_markdown_and_json_carry_the_numbers_without_images(tmp_path: Path) -> None:
    results = synthetic_results()
    md = render_markdown(results)
    assert "precision@10 over 100 held-out queries" in md and "SIMULATED" in md and "demo_report.html" in md
    ready = json_ready(results)
    text = json.dumps(ready)
    assert "image" not in json.dumps(ready["recommend"]["user"]["products"][0])
    assert json.loads(text)["search"]["precision"]["category"] == 0.8
    html_path = write_report(results, tmp_path)
    assert html_path == tmp_path / "demo_report.html"
    assert {p.name for p in tmp_path.iterdir()} == {"demo_report.html", "demo_report.json", "demo_report.md"}
    written = json.loads((tmp_path / "demo_report.json").read_text())
    assert written == json.loads(text) and "base64" not in text
    assert (
        written["seller"]["variants"][0]["preference_shift"] == 0.5 and "image" not in written["seller"]["variants"][0]
    )


def test_alter_chart_puts_optimisation_after_inversion() -> None:
    alter = synthetic_results().alter
    assert alter is not None
    frames = alter.frames
    series, vlines, loss = alter_chart_series(frames)
    xs = series[0][1]
    assert xs == [0.0, 20.0, 40.0, 40.0, 60.0]  # optimisation steps 0, 20 follow inversion step 40
    assert vlines == [(40.0, "optimisation starts")]
    assert loss[0][1] == [0.0, 20.0, 40.0]
    svg = svg_line_chart(series, title="t", vlines=vlines)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) == 2
    assert "no data" in svg_line_chart([("empty", [], [])])


def test_precision_rows_are_spread_over_classes() -> None:
    fm_class = np.repeat(np.arange(10), 100)
    rows = precision_rows(fm_class, 100)
    assert len(rows) == 100 and len(set(rows.tolist())) == 100
    assert np.bincount(fm_class[rows], minlength=10).tolist() == [10] * 10


# -- train / export / publish decisions ---------------------------------------------------------------


def _fake_run(root: Path, profile: str = "demo") -> Path:
    run = root / "runs" / profile
    for net in NETWORKS:
        (run / net).mkdir(parents=True)
        (run / net / CHECKPOINT).write_bytes(b"ckpt")
    (run / "onnx").mkdir()
    for n, name in enumerate(ALL_MODELS):
        path = linear_model(run / "onnx" / f"{name}.onnx", seed=n)
        if name in LOOP_SPECS:
            _with_loop_inputs(path, name)
        if name in CATEGORY_MODELS:
            with_categories(path, ("tops", "bags"))
    np.savez(run / USER_VECTORS, theta=np.zeros((2, 2), np.float32))
    return run


def _fake_repo(repo: Path, run: Path, version: int = 1) -> None:
    for name in ALL_MODELS:
        folder = repo / name / str(version)
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes((run / "onnx" / f"{name}.onnx").read_bytes())
        (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n')


def _with_loop_inputs(path: Path, name: str) -> None:
    """Add the inputs today's service sends to loop model ``name`` (unused by the stub's graph)."""
    import onnx

    model = onnx.load(str(path))
    spec = LOOP_SPECS[name]
    for input_name in (*spec.state_inputs, *spec.row_inputs):
        model.graph.input.append(onnx.helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, [1]))
    onnx.save(model, str(path))


def _rename_input(path: Path, name: str) -> None:
    """Rename the first graph input of an ONNX file (and its uses)."""
    import onnx

    model = onnx.load(str(path))
    old = model.graph.input[0].name
    model.graph.input[0].name = name
    for node in model.graph.node:
        node.input[:] = [name if i == old else i for i in node.input]
    onnx.save(model, str(path))


def test_decisions_follow_the_files(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    repo = tmp_path / "repo"
    assert training_reasons(run) == [] and export_reasons(run) == []
    carried = (run / "onnx" / "pref_grad.onnx").read_bytes()
    linear_model(run / "onnx" / "pref_grad.onnx", seed=99)  # exported before the models named their categories
    assert export_reasons(run) == [f"pref_grad in {run / 'onnx'} carry no category list (exported before models did)"]
    (run / "onnx" / "pref_grad.onnx").write_bytes(carried)
    _rename_input(run / "onnx" / "shift_grad.onnx", "user_weight")  # the per-user signature of older exports
    assert export_reasons(run) == [
        f"shift_grad in {run / 'onnx'} take per-user inputs (exported before they were batched)"
    ]
    _rename_input(run / "onnx" / "shift_grad.onnx", "x")
    assert export_reasons(run) == []
    pref_loop = run / "onnx" / "pref_loop.onnx"
    carried = pref_loop.read_bytes()
    with_categories(linear_model(pref_loop, seed=7), ("tops", "bags"))  # built before today's loop inputs
    assert export_reasons(run) == [
        f"pref_loop in {run / 'onnx'} lacks the inputs w, m, v, grad_z, step, steps, evaluate_first, learning_rate "
        "(built by an older exporter)"
    ]
    pref_loop.write_bytes(carried)
    assert export_reasons(run) == []
    assert publish_reasons(run / "onnx", repo) == {name: "not in the repository" for name in ALL_MODELS}
    _fake_repo(repo, run)
    assert publish_reasons(run / "onnx", repo) == {}
    (run / "onnx" / "generator.onnx").write_bytes(b"retrained")
    assert publish_reasons(run / "onnx", repo) == {"generator": "differs from v1"}
    later = time.time() + 10
    os.utime(run / "gan" / CHECKPOINT, (later, later))
    assert "gan" in export_reasons(run)[0]
    (run / "onnx" / "inv_grad.onnx").unlink()
    assert "inv_grad" in export_reasons(run)[0]
    (run / USER_VECTORS).unlink()
    (run / "dvbpr" / CHECKPOINT).unlink()
    assert len(training_reasons(run)) == 2


def test_up_to_date_models_are_not_published_again(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    repo, vectors = tmp_path / "repo", tmp_path / "user_vectors"
    _fake_repo(repo, run)
    vectors.mkdir()
    (vectors / f"{ITEM_ENCODER}_v1.npz").write_bytes((run / USER_VECTORS).read_bytes())
    lines: list[str] = []
    where = Locations(runs_root=tmp_path / "runs", repo_dir=repo, user_vectors_dir=vectors)
    before = sorted(str(p) for p in repo.rglob("*"))
    info = ensure_models(None, "demo", where, Stages(total=1, echo=lines.append))
    assert not info.trained and not info.exported and not info.published
    assert info.versions == {name: "1" for name in ALL_MODELS}
    assert sorted(str(p) for p in repo.rglob("*")) == before  # no new version, nothing copied
    assert any("nothing published" in line for line in lines)


def test_missing_user_vectors_are_published_for_the_served_encoder(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    repo, vectors = tmp_path / "repo", tmp_path / "user_vectors"
    _fake_repo(repo, run, version=3)
    where = Locations(runs_root=tmp_path / "runs", repo_dir=repo, user_vectors_dir=vectors)
    info = ensure_models(None, "demo", where, Stages(total=1, echo=lambda line: None))
    assert not info.published
    assert (vectors / f"{ITEM_ENCODER}_v3.npz").read_bytes() == (run / USER_VECTORS).read_bytes()
