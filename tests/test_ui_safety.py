"""The app's file-access and upload checks, as pure functions (no Streamlit needed)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from retrieval.errors import ImageDecodeError, InvalidQueryError
from ui.config import AppConfig, LaunchConfig, parse_app_args
from ui.launch import launch_environment, streamlit_command
from ui.safety import PathRefusedError, UploadLimits, decode_upload, is_inside, resolve_inside_roots


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    inside = root / "sub" / "a.jpg"
    Image.new("RGB", (8, 8), "red").save(inside)
    outside = tmp_path / "secret.txt"
    outside.write_text("do not read")
    sibling = tmp_path / "photos-private"
    sibling.mkdir()
    (sibling / "b.jpg").write_bytes(inside.read_bytes())
    return {"root": root, "inside": inside, "outside": outside, "sibling": sibling}


def test_path_inside_a_root_is_allowed(tree):
    assert resolve_inside_roots(tree["inside"], [tree["root"]]) == tree["inside"].resolve()
    assert resolve_inside_roots(str(tree["root"]), [str(tree["root"])]) == tree["root"].resolve()


def test_path_outside_every_root_is_refused(tree):
    with pytest.raises(PathRefusedError) as info:
        resolve_inside_roots(tree["outside"], [tree["root"]])
    assert isinstance(info.value, InvalidQueryError)
    assert not is_inside("/etc/passwd", [tree["root"]])


def test_dotdot_escape_is_refused(tree):
    sneaky = f"{tree['root']}/sub/../../secret.txt"
    assert Path(sneaky).exists()
    with pytest.raises(PathRefusedError):
        resolve_inside_roots(sneaky, [tree["root"]])
    # ``..`` that stays inside is fine
    assert resolve_inside_roots(f"{tree['root']}/sub/../sub/a.jpg", [tree["root"]]) == tree["inside"].resolve()


def test_prefix_sibling_folder_is_not_inside(tree):
    with pytest.raises(PathRefusedError):
        resolve_inside_roots(tree["sibling"] / "b.jpg", [tree["root"]])


def test_symlink_out_of_the_root_is_refused(tree):
    link = tree["root"] / "sub" / "link.jpg"
    link.symlink_to(tree["outside"])
    with pytest.raises(PathRefusedError):
        resolve_inside_roots(link, [tree["root"]])
    dir_link = tree["root"] / "escape"
    dir_link.symlink_to(tree["outside"].parent, target_is_directory=True)
    with pytest.raises(PathRefusedError):
        resolve_inside_roots(dir_link / "secret.txt", [tree["root"]])


def test_symlink_that_stays_inside_is_allowed(tree):
    link = tree["root"] / "alias.jpg"
    link.symlink_to(tree["inside"])
    assert resolve_inside_roots(link, [tree["root"]]) == tree["inside"].resolve()


def test_relative_and_empty_paths(tree, monkeypatch):
    monkeypatch.chdir(tree["root"] / "sub")
    assert resolve_inside_roots("a.jpg", [tree["root"]]) == tree["inside"].resolve()
    with pytest.raises(PathRefusedError):
        resolve_inside_roots("../../secret.txt", [tree["root"]])
    for bad in ("", "a\x00.jpg"):
        with pytest.raises(PathRefusedError):
            resolve_inside_roots(bad, [tree["root"]])
    with pytest.raises(PathRefusedError):
        resolve_inside_roots(tree["inside"], [])


def _png_bytes(size=(20, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, (0, 128, 255, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_good_upload_decodes_to_rgb():
    image = decode_upload(_png_bytes(), "shot.PNG")
    assert image.mode == "RGB" and image.size == (20, 10)


@pytest.mark.parametrize(
    ("data", "name", "reason"),
    [
        (b"", "empty.jpg", "empty"),
        (b"this is plain text, not a picture", "fake.jpg", "not_an_image"),
        (_png_bytes()[:60], "cut.png", "truncated_or_corrupt"),
        (_png_bytes(), "script.exe", "not_an_image"),
        (_png_bytes(), "noext", "not_an_image"),
    ],
)
def test_bad_uploads_raise_typed_errors(data, name, reason):
    with pytest.raises(ImageDecodeError) as info:
        decode_upload(data, name)
    if reason == "truncated_or_corrupt":
        assert info.value.reason in {"truncated", "corrupt"}
    else:
        assert info.value.reason == reason
    assert info.value.path == name


def test_upload_size_and_pixel_limits():
    with pytest.raises(ImageDecodeError) as info:
        decode_upload(_png_bytes(), "big.png", UploadLimits(max_bytes=10))
    assert info.value.reason == "too_large"
    with pytest.raises(ImageDecodeError) as info:
        decode_upload(_png_bytes((300, 300)), "wide.png", UploadLimits(max_pixels=300 * 299))
    assert info.value.reason == "decompression_bomb"


def test_app_args_and_environment(tmp_path):
    env = {"RETRIEVAL_UI_INDEXES": os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])}
    config = parse_app_args([], env)
    assert config.index_dirs == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
    config = parse_app_args(["--index", str(tmp_path / "c"), "--max-upload-mb", "2"], env)
    assert config.index_dirs == ((tmp_path / "c").resolve(),) and config.max_upload_bytes == 2 * 2**20


def test_streamlit_command_binds_localhost_headless(tmp_path):
    config = LaunchConfig(app=AppConfig(index_dirs=(tmp_path,), model="tiny-clip"), port=9123)
    cmd = streamlit_command(config, python=sys.executable)
    flags = dict(zip(cmd, cmd[1:]))
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "9123"
    assert flags["--server.headless"] == "true" and flags["--browser.gatherUsageStats"] == "false"
    script_args = cmd[cmd.index("--") + 1 :]
    assert parse_app_args(script_args, {}).index_dirs == (tmp_path.resolve(),)
    assert parse_app_args(script_args, {}).model == "tiny-clip"


def test_server_environment_threads_and_import_path():
    env = launch_environment({"PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == "1" and env["PATH"] == "/bin"
    assert Path(env["PYTHONPATH"].split(os.pathsep)[0], "ui", "app.py").is_file()
    assert launch_environment({"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    assert launch_environment({"OMP_NUM_THREADS": "3"}, threads=2)["OMP_NUM_THREADS"] == "2"


def test_launcher_refuses_what_is_not_an_index_and_a_busy_port_in_one_line(tmp_path, capsys):
    import socket

    from ui.__main__ import main
    from ui.launch import port_in_use

    photos = tmp_path / "photos" / "2024"
    photos.mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(photos / "a.jpg")
    assert main(["--index", str(tmp_path / "photos")]) == 2  # a folder of photos given by mistake
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'photos'} is a folder of photos, not an index; index it with `python -m indexer build "
        f"{tmp_path / 'photos'} --index INDEX_DIR` (a folder of its own) and open INDEX_DIR"
    )
    assert main(["--index", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: no index at {tmp_path / 'nothing'}; create one with "
        f"`python -m indexer build PHOTOS --index {tmp_path / 'nothing'}`"
    )
    assert main(["--index", str(photos / "a.jpg")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {photos / 'a.jpg'} is a file, not an index folder"
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "CURRENT").write_text("")  # a torn write
    assert main(["--index", str(damaged)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the index at {damaged} is damaged") and f"--index {damaged} --rebuild" in err

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert port_in_use("127.0.0.1", port) == "Address already in use"
    assert port_in_use("127.0.0.1", port) is None
    assert port_in_use("192.0.2.1", 8501) == "Cannot assign requested address"  # not an address of this machine
