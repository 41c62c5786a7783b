"""The decoder graphs the server offers the page: segany's split decoder (float32 or int8) and the
official-compatible decoder.onnx, with their identity and caching rules."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")


def _graph_ops(data: bytes) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load_from_string(data).graph.node}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_split_decoder_files_are_served_with_the_model_identity(make_sqlite_client, precision) -> None:
    import onnxruntime as ort

    c = make_sqlite_client(sizes=[(40, 60)], decoder_precision=precision)
    info = c.get("/api/model").json()
    model = info["id"]
    suffix = ".int8.onnx" if precision == "int8" else ".onnx"
    split = info["decoder_split"]
    assert split == {
        "image_cache_url": f"/api/model/image_cache{suffix}?model={model}",
        "decoder_lowres_url": f"/api/model/decoder_lowres{suffix}?model={model}",
        "precision": precision,
    }
    assert info["decoder_url"] == f"/api/model/decoder.onnx?model={model}"
    graphs = {}
    for url in (split["image_cache_url"], split["decoder_lowres_url"], info["decoder_url"]):
        r = c.get(url)
        assert r.status_code == 200, r.text
        assert "immutable" in r.headers["cache-control"] and r.headers["x-segany-model"] == model
        assert model in r.headers["etag"]
        assert c.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        graphs[url.split("?")[0].rsplit("/", 1)[1]] = r.content
    cache = ort.InferenceSession(graphs[f"image_cache{suffix}"], providers=["CPUExecutionProvider"])
    lowres = ort.InferenceSession(graphs[f"decoder_lowres{suffix}"], providers=["CPUExecutionProvider"])
    assert [i.name for i in cache.get_inputs()] == ["image_embeddings", "mask_input", "has_mask_input"]
    assert [o.name for o in cache.get_outputs()] == ["src", "k1", "v1", "q1"]
    assert [i.name for i in lowres.get_inputs()] == ["src", "k1", "v1", "q1", "point_coords", "point_labels"]
    assert [o.name for o in lowres.get_outputs()] == ["low_res_masks", "iou_predictions"]
    # int8: the weight products are integer ones; float32: none are.
    ops = _graph_ops(graphs[f"decoder_lowres{suffix}"])
    quantised = bool(ops & {"MatMulInteger", "DynamicQuantizeMatMul"})
    assert quantised == (precision == "int8")
    # Only the files of this server's precision, and nothing else of the export folder, are served.
    other = ".onnx" if precision == "int8" else ".int8.onnx"
    for name in (f"decoder_lowres{other}", "segany_onnx.json", "encoder.onnx"):
        r = c.get(f"/api/model/{name}")
        assert r.status_code == 404 and "decoder.onnx" in r.json()["detail"], name
    assert c.get("/api/model/..%2Fsegany_onnx.json").status_code == 404
    # A page that still holds another model's URLs is told so (as for embeddings).
    r = c.get(f"/api/model/decoder_lowres{suffix}?model=0123456789abcdef")
    assert r.status_code == 409 and "0123456789abcdef" in r.json()["detail"]


def test_an_older_cache_without_the_split_files_is_exported_again(make_sqlite_client) -> None:
    c = make_sqlite_client(sizes=[(40, 60)])
    service = c.app.state.server.service
    folder = service.decoder_path().parent
    (folder / "decoder_lowres.onnx").unlink()
    assert c.get("/api/model/decoder_lowres.onnx").status_code == 200
    assert (folder / "decoder_lowres.onnx").is_file()


def test_bad_decoder_precision_is_refused(make_sqlite_client, tiny_model, tmp_path) -> None:
    from segany.annotate.errors import ApiError
    from segany.annotate.modelsvc import ModelService
    from segany.annotate.server import Server, Settings

    with pytest.raises(ValueError, match="fp32, int8"):
        ModelService(tiny_model, tmp_path / "cache", decoder_precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ApiError, match="decoder precision"):
        Server(Settings(root=tmp_path, model=tiny_model, background=False, decoder_precision="int4"))


def test_cli_decoder_precision(tmp_path, monkeypatch, capsys) -> None:
    from annotate_helpers import write_images

    import segany.annotate.server as server_module
    from segany.cli.main import main

    write_images(tmp_path / "im", [(8, 8)])
    seen = []
    monkeypatch.setattr(server_module, "serve", lambda settings, host, port: seen.append(settings))
    assert main(["annotate", str(tmp_path / "im"), "--decoder-precision", "int8"]) == 0
    assert main(["annotate", str(tmp_path / "im")]) == 0
    assert [s.decoder_precision for s in seen] == ["int8", "fp32"]
    with pytest.raises(SystemExit) as exit_info:
        main(["annotate", str(tmp_path / "im"), "--decoder-precision", "fp16"])
    assert exit_info.value.code == 2 and "fp16" in capsys.readouterr().err
