"""The voice API beyond list and upload: one voice's facts, its download, deleting it, names that
ignore case, and the files' permissions; through a real uvicorn serving the demo model."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import os
from pathlib import Path

import httpx
import pytest
import torch

from tadastream.files import write_atomic
from tadastream.server.app import ServerSettings, create_app
from tadastream.service.voices import voice_seconds
from tests.helpers.server_harness import LiveServer

SHORT = "Hello there."


@pytest.fixture(scope="module")
def demo(demo_model, demo_voice):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo model is tiny: one thread is fastest
    yield demo_model, demo_voice
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("voices")


@pytest.fixture(scope="module")
def server(demo, folder):
    model, voice = demo
    settings = ServerSettings(max_streams=4, queue=8, voices_dir=str(folder), max_voice_bytes=1 << 20)
    with LiveServer(create_app(model, settings=settings, default_voice=voice)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def voice_bytes(demo, tmp_path_factory) -> bytes:
    """The demo voice as a .voice file (it records English as its language)."""
    path = tmp_path_factory.mktemp("src") / "demo.voice"
    demo[1].save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def german_bytes(demo, tmp_path_factory) -> bytes:
    """The demo voice labelled German: other bytes, so a replacement can be told from the original."""
    path = tmp_path_factory.mktemp("src") / "de.voice"
    dataclasses.replace(demo[1], language="de").save(path)
    return path.read_bytes()


def upload(client: httpx.Client, name: str, data: bytes, *, overwrite: bool = False) -> httpx.Response:
    form = {"name": name, **({"overwrite": "true"} if overwrite else {})}
    res = client.post("/v1/voices", data=form, files={"file": (f"{name}.voice", data)})
    assert res.status_code != 501, res.text  # python-multipart, in the test extra, is missing
    return res


def speak(client: httpx.Client, seed: int, **body) -> bytes:
    res = client.post("/v1/audio/speech", json={"input": SHORT, "seed": seed, "response_format": "pcm", **body})
    assert res.status_code == 200, res.text
    return res.content


def error_of(res: httpx.Response, status: int, code: str) -> dict:
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert error["code"] == code, error
    return error


def stored(folder: Path, name: str) -> list[str]:
    """The files in ``folder`` that answer to ``name`` in any case."""
    return sorted(p.name for p in folder.iterdir() if p.name.lower() == f"{name.lower()}.voice")


def test_facts_of_an_upload_and_of_the_default(client, folder, demo, voice_bytes):
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    assert upload(client, "facts", voice_bytes).status_code == 201
    info = client.get("/v1/voices/facts").json()
    created = info.pop("created")
    assert info == {
        "id": "facts",
        "object": "voice",
        "source": "file",
        "default": False,
        "language": "en",
        "seconds": round(voice_seconds(demo[1]), 3),
        "bytes": len(voice_bytes),
    }
    assert info["seconds"] > 0
    assert created.endswith("Z")
    when = datetime.datetime.fromisoformat(created)
    assert when.tzinfo is not None and before <= when <= datetime.datetime.now(datetime.UTC)
    mtime = datetime.datetime.fromtimestamp((folder / "facts.voice").stat().st_mtime, datetime.UTC)
    assert abs((when - mtime).total_seconds()) < 1

    builtin = client.get("/v1/voices/default").json()
    assert builtin["id"] == "default" and builtin["source"] == "builtin" and builtin["default"] is True
    assert builtin["language"] == "en" and builtin["seconds"] == info["seconds"] and builtin["created"] is None
    assert builtin["bytes"] > 0
    # OpenAI's names, in any case, are the default voice while no file is named so
    assert client.get("/v1/voices/ALLOY").json() == builtin


def test_a_download_uploads_again_and_speaks_the_same(client, voice_bytes):
    assert upload(client, "dl_src", voice_bytes).status_code == 201
    res = client.get("/v1/voices/DL_SRC", params={"download": "true"})
    assert res.status_code == 200
    assert res.headers["content-type"] == "application/octet-stream"
    assert res.headers["content-disposition"] == 'attachment; filename="dl_src.voice"'
    assert res.content == voice_bytes
    assert upload(client, "dl_copy", res.content).status_code == 201

    builtin = client.get("/v1/voices/default", params={"download": "1"})
    assert builtin.status_code == 200 and 'filename="default.voice"' in builtin.headers["content-disposition"]
    assert len(builtin.content) == client.get("/v1/voices/default").json()["bytes"]
    assert upload(client, "dl_default", builtin.content).status_code == 201
    # all hold the demo voice, so they speak exactly as the default voice does
    reference = speak(client, 7)
    assert speak(client, 7, voice="dl_copy") == reference
    assert speak(client, 7, voice="dl_default") == reference


def test_delete_removes_the_file_and_the_cached_copy(server, client, folder, voice_bytes):
    store = server.app.state.voices
    assert upload(client, "gone", voice_bytes).status_code == 201
    speak(client, 1, voice="gone")  # loads it into the store's cache
    assert "gone" in store._cache

    res = client.delete("/v1/voices/Gone")
    assert res.status_code == 200 and res.json() == {"id": "gone", "object": "voice", "deleted": True}
    assert not (folder / "gone.voice").exists() and "gone" not in store._cache
    assert error_of(client.get("/v1/voices/gone"), 404, "voice_not_found")["type"] == "not_found_error"
    error_of(client.get("/v1/voices/gone", params={"download": "true"}), 404, "voice_not_found")
    error_of(client.delete("/v1/voices/gone"), 404, "voice_not_found")
    assert "gone" not in [v["id"] for v in client.get("/v1/voices").json()["data"]]
    speech = client.post("/v1/audio/speech", json={"input": SHORT, "voice": "gone"})
    error_of(speech, 400, "voice_not_found")


def test_the_builtin_voice_cannot_be_deleted_but_a_file_named_like_it_can(client, folder, voice_bytes):
    for name in ("default", "Default", "alloy", "NOVA"):
        error = error_of(client.delete(f"/v1/voices/{name}"), 403, "builtin_voice")
        assert "cannot be deleted" in error["message"]
    # a file named after an OpenAI voice (put there by hand: uploads refuse the name) is a file voice
    error_of(upload(client, "Nova", voice_bytes), 400, "invalid_voice_name")
    write_atomic(folder / "nova.voice", voice_bytes)
    assert client.get("/v1/voices/NOVA").json()["source"] == "file"
    assert client.delete("/v1/voices/nova").json() == {"id": "nova", "object": "voice", "deleted": True}
    assert client.get("/v1/voices/nova").json()["source"] == "builtin"  # the name means the default again


def test_names_ignore_case_on_upload_and_lookup(client, folder, voice_bytes, german_bytes):
    assert upload(client, "qa1", voice_bytes).status_code == 201
    conflict = error_of(upload(client, "QA1", german_bytes), 409, "voice_exists")
    assert "qa1" in conflict["message"] and "overwrite" in conflict["message"]
    assert stored(folder, "qa1") == ["qa1.voice"]
    assert (folder / "qa1.voice").read_bytes() == voice_bytes
    assert client.get("/v1/voices/Qa1").json()["id"] == "qa1"
    assert speak(client, 2, voice="QA1") == speak(client, 2, voice="qa1")

    assert upload(client, "QA1", german_bytes, overwrite=True).status_code == 201
    assert stored(folder, "qa1") == ["QA1.voice"]  # replaced, spelt as the upload: one file remains
    assert (folder / "QA1.voice").read_bytes() == german_bytes
    info = client.get("/v1/voices/qa1").json()
    assert info["id"] == "QA1" and info["language"] == "de"
    assert client.delete("/v1/voices/qA1").json()["id"] == "QA1"
    assert stored(folder, "qa1") == []


def test_names_differing_only_by_case_on_disk(client, folder, voice_bytes, german_bytes):
    """A hand-filled folder on Linux can hold both: each is reached by its exact name, any other spelling is
    refused as ambiguous, and an upload with overwrite leaves one."""
    write_atomic(folder / "twin.voice", voice_bytes)
    write_atomic(folder / "TWIN.voice", german_bytes)
    if len(stored(folder, "twin")) != 2:
        pytest.skip("this file system ignores case")
    listed = [v["id"] for v in client.get("/v1/voices").json()["data"]]
    assert "twin" in listed and "TWIN" in listed
    assert client.get("/v1/voices/twin").json()["language"] == "en"
    assert client.get("/v1/voices/TWIN").json()["language"] == "de"
    ambiguous = error_of(client.get("/v1/voices/Twin"), 409, "ambiguous_voice_name")
    assert "TWIN" in ambiguous["message"] and "twin" in ambiguous["message"]
    error_of(client.delete("/v1/voices/Twin"), 409, "ambiguous_voice_name")
    speech = client.post("/v1/audio/speech", json={"input": SHORT, "voice": "tWIN"})
    assert error_of(speech, 409, "ambiguous_voice_name")["param"] == "voice"
    error_of(upload(client, "Twin", voice_bytes), 409, "voice_exists")

    assert upload(client, "Twin", voice_bytes, overwrite=True).status_code == 201
    assert stored(folder, "twin") == ["Twin.voice"]
    assert client.get("/v1/voices/TWIN").json()["id"] == "Twin"
    client.delete("/v1/voices/twin")


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_stored_files_get_the_umasks_mode(client, folder, voice_bytes, tmp_path, mask):
    old = os.umask(mask)
    try:
        name = f"mode{mask:o}"
        assert upload(client, name, voice_bytes).status_code == 201
        assert upload(client, name.upper(), voice_bytes, overwrite=True).status_code == 201  # the replace path
        target = write_atomic(tmp_path / "plain.bin", b"x")
    finally:
        os.umask(old)
    expected = 0o666 & ~mask
    assert expected == (0o644 if mask == 0o022 else 0o640)
    assert (folder / f"{name.upper()}.voice").stat().st_mode & 0o777 == expected
    assert target.stat().st_mode & 0o777 == expected


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/voices/bad.name", 400, "invalid_voice_name"),
        ("DELETE", "/v1/voices/bad.name", 400, "invalid_voice_name"),
        ("GET", "/v1/voices/" + "x" * 65, 400, "invalid_voice_name"),
        ("GET", "/v1/voices/a%20b", 400, "invalid_voice_name"),
        ("GET", "/v1/voices/nobody", 404, "voice_not_found"),
        ("GET", "/v1/voices/nobody?download=true", 404, "voice_not_found"),
        ("DELETE", "/v1/voices/nobody", 404, "voice_not_found"),
        ("GET", "/v1/voices/default?download=maybe", 400, "invalid_request"),
    ],
)
def test_bad_names_and_unknown_voices(client, method, path, status, code):
    error = error_of(client.request(method, path), status, code)
    if code != "invalid_request":
        assert error["param"] == "name"


def test_without_a_voices_folder(demo):
    model, voice = demo
    with LiveServer(create_app(model, settings=ServerSettings(), default_voice=voice)) as live, live.client() as c:
        error = error_of(c.delete("/v1/voices/mine"), 403, "uploads_disabled")
        assert "--voices" in error["message"]
        error_of(c.delete("/v1/voices/default"), 403, "builtin_voice")
        error_of(c.get("/v1/voices/mine"), 404, "voice_not_found")
        assert c.get("/v1/voices/echo").json()["source"] == "builtin"


def test_uploads_racing_deletes_never_leave_half_files(client, folder, voice_bytes, german_bytes):
    def put(data: bytes) -> int:
        return upload(client, "race", data, overwrite=True).status_code

    def drop(_: int) -> int:
        return client.delete("/v1/voices/RACE").status_code

    def fetch(_: int) -> int:
        res = client.get("/v1/voices/race", params={"download": "true"})
        assert res.status_code == 404 or res.content in (voice_bytes, german_bytes)
        return res.status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(put, (voice_bytes, german_bytes)[i % 2]) for i in range(10)]
        jobs += [pool.submit(drop, i) for i in range(8)] + [pool.submit(fetch, i) for i in range(8)]
        statuses = [job.result() for job in jobs]
    assert set(statuses[:10]) == {201} and set(statuses[10:18]) <= {200, 404} and set(statuses[18:]) <= {200, 404}
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "a temporary file was left"
    for name in stored(folder, "race"):
        assert (folder / name).read_bytes() in (voice_bytes, german_bytes)
    assert len(stored(folder, "race")) <= 1


def test_the_schema_documents_the_voice_routes(client):
    schema = client.get("/openapi.json").json()
    one = schema["paths"]["/v1/voices/{name}"]
    assert set(one) >= {"get", "delete"} and set(schema["paths"]["/v1/voices"]) >= {"get", "post"}
    get, delete = one["get"], one["delete"]
    assert get["summary"] and "download=true" in get["description"] and delete["summary"]
    assert {"200", "400", "404"} <= set(get["responses"]) and {"200", "403", "404"} <= set(delete["responses"])
    assert "application/octet-stream" in get["responses"]["200"]["content"]
    assert [p["name"] for p in get["parameters"]] == ["name", "download"]
    example = delete["responses"]["403"]["content"]["application/json"]["example"]
    assert example["error"]["code"] == "builtin_voice"
    assert set(schema["components"]["schemas"]["VoiceInfo"]["properties"]) >= {"language", "seconds", "created"}
