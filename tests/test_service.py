"""The search service over HTTP: a real server process on a free port, a real index built by the
real indexer with the tiny model, real image files, and httpx as the client."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from retrieval import open_index
from retrieval.service.indexes import photo_id
from tests.conftest import run_module, write_image
from tests.service_server import Service, build_index, running_service

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}


@pytest.fixture(scope="module")
def photos_and_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("service")
    photos = root / "photos"
    for name, color in COLORS.items():
        write_image(photos / "jpegs" / f"{name}.jpg", size=(64, 48), color=color)
        write_image(photos / "pngs" / f"{name}.png", size=(48, 64), color=color)
    return photos, build_index(photos, root / "index")


@pytest.fixture(scope="module")
def service(photos_and_index) -> Service:
    _, index = photos_and_index
    with running_service("--index", str(index), "--max-upload-mb", "1", "--max-megapixels", "1") as svc:
        yield svc


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "status"} and body["status"] == status
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    return body


def png_bytes(size: tuple[int, int], color=(10, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def test_text_search_answers_what_the_library_answers(service, photos_and_index) -> None:
    _, index = photos_and_index
    with service.client() as c:
        body = c.post("/search", json={"text": "a red photo", "k": 5}).json()
    local = open_index(index).search("a red photo", k=5)
    assert [h["path"] for h in body["results"]] == [r.path for r in local]
    assert [h["score"] for h in body["results"]] == pytest.approx([r.score for r in local], abs=1e-6)
    assert all(h["id"] == photo_id(h["path"]) for h in body["results"])
    assert body["generation"].startswith("gen-") and body["no_match"] is None


def test_expressions_and_pages_answer_what_the_library_answers(service, photos_and_index) -> None:
    photos, index = photos_and_index
    local = open_index(index)
    red = str((photos / "jpegs" / "red.jpg").resolve())
    expression = f"a red photo - blue + 0.5:@{red}"
    with service.client() as c:
        body = c.post("/search", json={"text": expression, "k": 3, "offset": 2}).json()
        outside = c.post("/search", json={"text": "a photo - @/etc/hostname"})
        bad_sort = c.post("/search", json={"text": "a photo", "sort": "size"})
    want = local.search(expression, k=3, offset=2)
    assert [(h["rank"], h["path"]) for h in body["results"]] == [(r.rank, r.path) for r in want]
    assert [h["rank"] for h in body["results"]] == [3, 4, 5]
    assert "only photos of the index" in assert_json_error(outside, 400)["error"]
    assert_json_error(bad_sort, 422)


def test_every_filter_of_the_command_line_applies(service, photos_and_index) -> None:
    photos, _ = photos_and_index
    with service.client() as c:
        pngs = c.post("/search", json={"text": "a photo", "k": 8, "types": ["png"]}).json()["results"]
        folder = c.post("/search", json={"text": "a photo", "k": 8, "folder": str(photos / "jpegs")}).json()["results"]
        dated = c.post("/search", json={"text": "a photo", "date_from": "2000-01-01", "date_to": "2999-12-31"}).json()
        old = c.post("/search", json={"text": "a photo", "date_to": "1971-01-01"}).json()
        tag = c.post("/search", json={"text": "a photo", "tag": "cat"}).json()
        relevance = c.post("/search", json={"text": "a photo", "min_relevance": 0.5})
    assert len(pngs) == 4 and {h["metadata"]["file_type"] for h in pngs} == {"png"}
    assert len(folder) == 4 and all(h["path"].startswith(str(photos.resolve() / "jpegs")) for h in folder)
    assert len(dated["results"]) == 8
    assert old["results"] == [] and "between" in old["no_match"]
    assert tag["results"] == [] and "no tags" in tag["no_match"]
    assert "calibration" in assert_json_error(relevance, 400)["error"]  # the tiny model has none


def test_an_uploaded_image_finds_itself_first(service, photos_and_index) -> None:
    photos, _ = photos_and_index
    target = photos / "pngs" / "blue.png"
    with service.client() as c:
        body = c.post("/search/image", files={"file": ("q.png", target.read_bytes())}, data={"k": "3"}).json()
        jpegs = c.post(
            "/search/image", files={"file": ("q.png", target.read_bytes())}, data={"k": "8", "types": ["jpeg"]}
        ).json()
    assert body["results"][0]["path"] == str(target.resolve())
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-2)
    assert len(jpegs["results"]) == 4 and all(h["path"].endswith(".jpg") for h in jpegs["results"])


def test_a_photo_by_id_its_thumbnail_info_and_similar_photos(service, photos_and_index) -> None:
    photos, _ = photos_and_index
    path = (photos / "jpegs" / "green.jpg").resolve()
    pid = photo_id(str(path))
    with service.client() as c:
        raw = c.get(f"/photos/{pid}")
        thumb = c.get(f"/photos/{pid}/thumbnail", params={"size": 32})
        info = c.get(f"/photos/{pid}/info").json()
        similar = c.get(f"/photos/{pid}/similar", params={"k": 3}).json()
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/jpeg"
    assert raw.content == path.read_bytes()
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert im.format == "JPEG" and max(im.size) <= 32
    assert info["path"] == str(path) and info["metadata"]["width"] == 64
    assert len(similar["results"]) == 3 and str(path) not in [h["path"] for h in similar["results"]]


def test_unknown_and_malformed_ids_are_json_404_and_422(service) -> None:
    with service.client() as c:
        assert "no photo with id" in assert_json_error(c.get("/photos/0123456789abcdef"), 404)["error"]
        assert_json_error(c.get("/photos/0123456789abcdef/thumbnail"), 404)
        assert_json_error(c.get("/photos/not-an-id"), 422)
        assert_json_error(c.get("/photos/0123456789ABCDEF"), 422)


def test_paths_never_reach_a_file(service, photos_and_index) -> None:
    photos, _ = photos_and_index
    never_indexed = write_image(photos / "pngs" / "added-later.png", color=(1, 2, 3))  # inside the folders
    attempts = [
        "/photos/..%2F..%2F..%2Fetc%2Fpasswd",
        "/photos/%2e%2e/%2e%2e/etc/passwd",
        "/photos/..%252F..%252Fetc%252Fpasswd",
        f"/photos/{photo_id('/etc/passwd')}",
        f"/photos/{photo_id(str(never_indexed.resolve()))}",
        "/photos//etc/passwd",
        "/photos/%2Fetc%2Fpasswd/thumbnail",
    ]
    with service.client() as c:
        for url in attempts:
            response = c.get(url)
            assert response.status_code in (404, 422), url
            assert response.json()["error"] and b"root:" not in response.content
        described = c.post("/describe", data={"photo_id": "../../../etc/passwd", "texts": ["a"]})
        classified = c.post("/classify", data={"photo_id": str(never_indexed), "labels": "a,b"})
        templates = c.post(
            "/classify",
            data={
                "photo_id": photo_id(str((photos / "pngs/red.png").resolve())),
                "labels": "a,b",
                "templates": "/etc/passwd",
            },
        )
    assert_json_error(described, 400)
    assert_json_error(classified, 400)
    assert "template" in assert_json_error(templates, 400)["error"]


def test_oversized_uploads_are_413(service) -> None:
    big = png_bytes((1100, 1000))  # 1.1 megapixels: over --max-megapixels 1, small in bytes
    assert len(big) < 1024 * 1024
    with service.client() as c:
        pixels = c.post("/search/image", files={"file": ("big.png", big)})
        too_many_bytes = c.post("/search/image", files={"file": ("x.png", b"\0" * (2 * 1024 * 1024))})
        chunked = c.post("/search", content=iter([b" " * 65536] * 32), headers={"content-type": "application/json"})
    assert "pixels" in assert_json_error(pixels, 413)["error"]
    assert "over the limit" in assert_json_error(too_many_bytes, 413)["error"]
    assert "over the limit" in assert_json_error(chunked, 413)["error"]


def test_malformed_requests_get_one_json_line(service) -> None:
    with service.client() as c:
        cases = [
            (c.post("/search", content=b"{not json", headers={"content-type": "application/json"}), 422),
            (c.post("/search", json={"k": 3}), 422),
            (c.post("/search", json={"text": "a", "vector": [1.0]}), 422),
            (c.post("/search", json={"text": "a", "k": 0}), 422),
            (c.post("/search", json={"text": "a", "k": "ten"}), 422),
            (c.post("/search", json={"text": "a", "colour": "red"}), 422),
            (c.post("/search", json={"text": "   "}), 400),
            (c.post("/search", json={"text": "a", "date_from": "yesterday"}), 400),
            (c.post("/search", json={"text": "a", "types": ["pdf"]}), 400),
            (c.post("/search", json={"vector": [0.0] * 16}), 400),
            (c.post("/search", json={"vector": [1.0] * 3}), 400),
            (c.post("/search", json={"text": "a", "index": "other"}), 404),
            (c.post("/search/image", files={"file": ("notes.png", b"not an image at all")}), 422),
            (c.post("/search/image", data={"k": "3"}), 422),
            (c.post("/describe", data={"texts": ["a"]}), 400),
            (c.post("/classify", data={"photo_id": "0123456789abcdef", "labels": "a,a"}), 400),
            (c.get("/photos/0123456789abcdef/thumbnail", params={"size": 99999}), 422),
        ]
    for response, status in cases:
        assert_json_error(response, status)
    assert any("give exactly one of text or vector" in r.json()["error"] for r, _ in cases)


def test_a_foreign_host_header_is_403(service) -> None:
    with service.client() as c:
        for host in ("evil.example", f"evil.example:{service.port}", "127.0.0.1.evil.example", "localhost.evil"):
            assert "not allowed" in assert_json_error(c.get("/health", headers={"host": host}), 403)["error"]
        assert_json_error(c.post("/search", json={"text": "a"}, headers={"host": "rebind.example"}), 403)
        for host in (f"localhost:{service.port}", f"127.0.0.1:{service.port}", f"[::1]:{service.port}"):
            assert c.get("/health", headers={"host": host}).status_code == 200


def test_describe_classify_stats_and_docs(service, photos_and_index) -> None:
    photos, _ = photos_and_index
    red = (photos / "pngs" / "red.png").resolve()
    with service.client() as c:
        described = c.post(
            "/describe", data={"photo_id": photo_id(str(red)), "texts": ["a red photo", "a dog", "x"], "k": "2"}
        ).json()
        uploaded = c.post(
            "/describe",
            files={"file": ("r.png", red.read_bytes())},
            data={"texts": ["a red photo", "a dog", "x"], "k": "2"},
        ).json()
        by_id = c.post(
            "/classify", data={"photo_id": photo_id(str(red)), "labels": "red,green,blue", "reject": "false", "k": "3"}
        ).json()
        by_upload = c.post(
            "/classify",
            files={"file": ("r.png", red.read_bytes())},
            data={"labels": "red,green,blue", "reject": "false"},
        ).json()
        stats = c.get("/stats").json()
        docs, schema = c.get("/docs"), c.get("/openapi.json").json()
    assert [r["text"] for r in described["results"]] == [r["text"] for r in uploaded["results"]]
    assert len(described["results"]) == 2
    assert sorted(p["label"] for p in by_id["predictions"]) == ["blue", "green", "red"]
    assert sum(p["probability"] for p in by_id["predictions"]) == pytest.approx(1.0, abs=1e-4)
    assert [p["label"] for p in by_upload["predictions"]] == [p["label"] for p in by_id["predictions"]]
    assert stats["count"] == 8 and stats["file_types"] == {"jpeg": 4, "png": 4} and stats["model_spec"] == "tiny-clip"
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert {"/search", "/search/image", "/photos/{photo_id}", "/describe", "/classify", "/stats"} <= set(
        schema["paths"]
    )


@pytest.mark.slow
def test_a_new_generation_is_served_without_a_restart(tmp_path: Path, photos_and_index) -> None:
    photos = tmp_path / "photos"
    for name in ("red", "green"):
        write_image(photos / f"{name}.png", color=COLORS[name])
    index = build_index(photos, tmp_path / "index")
    with running_service("--index", f"live={index}", "--index", f"other={photos_and_index[1]}") as svc:
        with svc.client() as c:
            before = c.get("/health").json()["indexes"]
            assert c.get("/stats", params={"index": "other"}).json()["count"] == 8
            counts: list[int] = []
            failures: list[str] = []
            done = threading.Event()

            def keep_searching() -> None:
                with svc.client() as cc:
                    while not done.is_set():
                        r = cc.post("/search", json={"text": "a photo", "k": 10, "index": "live"})
                        counts.append(len(r.json()["results"])) if r.status_code == 200 else failures.append(r.text)

            searcher = threading.Thread(target=keep_searching)
            searcher.start()
            try:
                added = write_image(photos / "yellow.png", color=COLORS["yellow"])
                run_module("indexer", "update", "--index", str(index))
            finally:
                done.set()
                searcher.join(timeout=120)
            after = c.get("/health").json()["indexes"]
            found = c.post("/search", json={"text": "a photo", "k": 10, "index": "live"}).json()
            photo = c.get(f"/photos/{photo_id(str(added.resolve()))}", params={"index": "live"})
    assert after["live"] != before["live"] and after["other"] == before["other"]
    assert str(added.resolve()) in [h["path"] for h in found["results"]] and found["generation"] == after["live"]
    assert photo.status_code == 200 and photo.content == added.read_bytes()
    assert not failures and counts and set(counts) <= {2, 3}
    assert json.dumps(counts)  # every answer during the update was the old index or the new one
