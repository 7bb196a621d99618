"""``md4 serve`` over HTTP (Starlette's TestClient, and uvicorn where a job must stay open): the page and its files,
the runs it lists (never a path), text jobs streaming their steps to samples that keep the prompt or template
exactly, image jobs streaming pictures, the limits and bad requests refused in one sentence, a busy server's 429,
a closed connection cancelling its job, uploads converted in memory, and the command's own errors."""

from __future__ import annotations

import base64
import io
import json
import sys
import time

import httpx
import numpy as np
import pytest
from cli_runs import cli, one_error
from PIL import Image
from starlette.testclient import TestClient

from md4.serve.app import build_app
from md4.serve.catalog import load_runs
from md4.serve.hosting import is_loopback, running
from md4.serve.jobs import Limits

SETTINGS = {"sampler": "ancestral", "steps": 12, "grid": "uniform", "seed": 0}


@pytest.fixture(scope="module")
def runs(serve_runs):
    text, digits, cache = serve_runs
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MD4_CACHE_DIR", str(cache))
        return load_runs([str(text), str(digits)], device="cpu")


@pytest.fixture(scope="module")
def client(runs):
    return TestClient(
        build_app(runs, Limits(length=64, steps=100, samples=12, request_bytes=50_000)), "http://127.0.0.1"
    )


def events_of(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]


def replayed(events: list[dict]) -> list[str]:
    """The samples rebuilt from the start event and the steps (each position filled once, never a given one)."""
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"
    samples = [list(tokens) for tokens in events[0]["samples"]]
    for number, event in enumerate(events[1:-1], start=1):
        assert event["type"] == "step" and event["step"] == number
        for row, position, piece in event["tokens"]:
            assert samples[row][position] is None
            samples[row][position] = piece
    assert all(piece is not None for sample in samples for piece in sample)
    return ["".join(sample) for sample in samples]


def test_the_page_and_its_files_load_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and "md4" in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/..%2Fapp.py").status_code == 404
    assert client.get("/", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding of 127.0.0.1


def test_the_runs_are_listed_by_index_and_name_never_by_path(client, serve_runs):
    listing = client.get("/api/runs")
    runs = listing.json()["runs"]
    assert [(run["index"], run["name"], run["kind"]) for run in runs] == [(0, "text", "text"), (1, "digits", "images")]
    assert str(serve_runs[0].parent) not in listing.text
    assert runs[1]["classes"] == 10 and len(runs[1]["test_images"]) == 12
    assert runs[0]["defaults"]["length"] == 32 and "exact" in [s["name"] for s in runs[0]["samplers"]]


def test_a_prompted_text_job_streams_its_steps_and_keeps_the_prompt(client):
    body = {**SETTINGS, "mode": "prompt", "text": "To be", "num": 2, "length": 24}
    events = events_of(client.post("/api/runs/0/text", json=body))
    done = events[-1]
    assert len(events) > 3 and done["steps"] == len(events) - 2 and done["nfe"] >= 1
    assert replayed(events) == done["texts"]
    assert all(text.startswith("To be") and len(text) == 24 for text in done["texts"])
    assert events[0]["samples"][0][:5] == list("To be")


@pytest.mark.parametrize("sampler", ["exact", "confident", "top_p"])
def test_an_infill_keeps_every_given_character(client, sampler):
    template = "To be, or ____ to __, that __."
    body = {**SETTINGS, "sampler": sampler, "top_p": 0.9, "mode": "infill", "text": template, "num": 3}
    events = events_of(client.post("/api/runs/0/text", json=body))
    for text in events[-1]["texts"]:
        assert len(text) == len(template)
        assert all(t == g for t, g in zip(text, template, strict=True) if g != "_")
    assert replayed(events) == events[-1]["texts"]


def test_an_image_grid_streams_pictures_of_the_grid(client):
    body = {**SETTINGS, "mode": "grid", "label": "all", "num": 1, "guidance": 2.0}
    events = events_of(client.post("/api/runs/1/images", json=body))
    assert [events[0]["type"], events[-1]["type"]] == ["start", "done"]
    assert all(e["type"] == "frame" for e in events[1:-1])
    assert events[0]["caption"] == "A row per class, 0 to 9 from the top (guidance 2)."
    final = Image.open(io.BytesIO(base64.b64decode(events[-1]["frame"].split(",")[1])))
    assert final.size == (8, 10 * 8 + 9 * 2)  # ten rows of one 8x8 image, 2-pixel gaps


def test_an_image_infill_keeps_the_pixels_outside_the_drawn_region(client, runs):
    hole = "0" * 32 + "1" * 32  # the bottom half of 8x8
    body = {**SETTINGS, "mode": "infill", "test": 3, "mask": hole, "num": 2, "label": 7}
    events = events_of(client.post("/api/runs/1/images", json=body))
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(events[-1]["frame"].split(",")[1]))).convert("L"))
    given = runs[1].loaded.codec.to_pixels(runs[1].test_images[3][0])[..., 0]
    for i in range(2):
        assert (picture[:4, i * 10 : i * 10 + 8] == given[:4]).all()


def test_an_uploaded_picture_is_converted_in_memory_to_the_model_s_size_and_levels(client, runs):
    picture = Image.new("RGBA", (56, 40), (0, 0, 0, 0))
    picture.paste((255, 255, 255, 255), (0, 0, 28, 40))  # the left half white
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    upload = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    answer = client.post("/api/runs/1/upload", json={"png": upload})
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["png"].split(",")[1]))).convert("L"))
    assert seen.shape == (8, 8) and (seen[:, :4] == 255).all() and (seen[:, 4:] == 0).all()
    inverted = client.post("/api/runs/1/upload", json={"png": upload, "invert": True}).json()["png"]
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(inverted.split(",")[1]))).convert("L"))
    assert (seen[:, :4] == 0).all()
    body = {**SETTINGS, "mode": "infill", "png": upload, "mask": "1" * 64, "num": 1}
    assert events_of(client.post("/api/runs/1/images", json=body))[-1]["type"] == "done"


@pytest.mark.parametrize(
    "path, body, status, sentence",
    [
        ("0/text", {**SETTINGS, "steps": 101}, 400, "steps must be a whole number from 1 to 100, got 101."),
        ("0/text", {**SETTINGS, "num": 13}, 400, "num must be a whole number from 1 to 12, got 13."),
        ("0/text", {**SETTINGS, "length": 65}, 400, "length must be a whole number from 1 to 64, got 65."),
        ("0/text", {**SETTINGS, "mode": "infill", "text": "_" * 65}, 400, "The template is 65 tokens long"),
        ("0/text", {**SETTINGS, "mode": "infill", "text": "To be"}, 400, "The template has no _"),
        ("0/text", {**SETTINGS, "mode": "prompt", "text": ""}, 400, "The prompt is empty"),
        ("0/text", {**SETTINGS, "sampler": "fast"}, 400, "sampler must be one of ancestral, top_p, mean"),
        (
            "0/text",
            {**SETTINGS, "sampler": "top_p", "top_p": 0},
            400,
            "top_p must be a number above 0 and at most 1, got 0.",
        ),
        ("0/text", {**SETTINGS, "text": "x" * 60_000}, 413, "larger than this server's limit of 50,000 bytes"),
        ("0/images", SETTINGS, 400, "text is a text run; use its text controls."),
        ("1/images", {**SETTINGS, "label": "all", "num": 2}, 400, "2 of each of 10 classes is 20 images"),
        ("1/images", {**SETTINGS, "label": 10}, 400, "label must be a whole number from 0 to 9, got 10."),
        ("1/images", {**SETTINGS, "guidance": -1}, 400, "guidance must be a number from 0 to 1000"),
        ("1/images", {**SETTINGS, "mode": "infill", "test": 0, "mask": "0" * 64}, 400, "The mask is empty"),
        ("1/images", {**SETTINGS, "mode": "infill", "test": 0, "mask": "1"}, 400, "The mask must be 64 characters"),
        ("1/images", {**SETTINGS, "mode": "infill", "test": 12}, 400, "test must be a whole number from 0 to 11"),
        ("1/upload", {"png": "bm90IGEgcGljdHVyZQ=="}, 400, "The upload is not a picture md4 can read; upload a PNG."),
        ("1/upload", {"png": "%%%"}, 400, "The upload is not base64 data"),
        ("1/upload", {"invert": True}, 400, "The request has no picture"),
        ("2/text", SETTINGS, 404, "There is no run 2; this server has runs 0 to 1."),
    ],
)
def test_bad_requests_are_refused_in_one_sentence(client, path, body, status, sentence):
    answer = client.post(f"/api/runs/{path}", json=body)
    assert answer.status_code == status and sentence in answer.json()["error"], answer.text
    assert answer.json()["error"].count(". ") == 0 and answer.json()["error"].endswith(".")


def test_a_request_must_be_json(client):
    answer = client.post("/api/runs/0/text", content=b"steps=5", headers={"content-type": "text/plain"})
    assert answer.status_code == 415 and "as JSON" in answer.json()["error"]
    answer = client.post("/api/runs/0/text", content=b"{", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]


def test_a_busy_server_says_so_and_a_closed_page_cancels_its_job(runs):
    """A long job holds the one slot: a second request gets 429; closing the first connection frees the slot."""
    long_job = {**SETTINGS, "steps": 1000, "num": 40, "length": 1024}
    small_job = {**SETTINGS, "num": 1, "length": 8}
    with running(build_app(runs, Limits())) as url, httpx.Client(base_url=url, timeout=60) as http:
        with http.stream("POST", "/api/runs/0/text", json=long_job) as stream:
            assert next(line for line in stream.iter_lines() if line.startswith("data: "))
            busy = http.post("/api/runs/0/text", json=small_job)
            assert busy.status_code == 429 and "busy with another job" in busy.json()["error"]
        deadline = time.monotonic() + 20
        while (answer := http.post("/api/runs/0/text", json=small_job)).status_code == 429:
            assert time.monotonic() < deadline, "the job went on after its connection closed"
            time.sleep(0.05)  # the job stops at its next step once the connection is gone
        assert answer.status_code == 200 and '"type":"done"' in answer.text


def test_md4_serve_refuses_a_run_it_cannot_load_in_one_sentence(tmp_path, capsys):
    code, _, err = cli(capsys, "serve", tmp_path / "missing", "--port", 0)
    assert code != 0 and str(tmp_path / "missing") in one_error(err)
    code, _, err = cli(capsys, "serve", tmp_path, "--max-steps", 0)
    assert code != 0 and "--max-steps must be a positive integer, got 0." in one_error(err)


def test_md4_serve_without_its_extra_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("md4.serve.hosting.find_spec", lambda name: None)
    code, _, err = cli(capsys, "serve", tmp_path)
    assert code != 0 and "pip install 'md4[serve]'" in one_error(err)


def test_md4_serve_warns_when_the_page_is_reachable_from_other_machines(serve_runs, capsys, monkeypatch):
    class Served:
        def run(self, sockets):
            print("served", file=sys.stderr)

    monkeypatch.setattr("md4.cli.serve.server_for", lambda app, sock: Served())
    code, _, err = cli(capsys, "serve", serve_runs[0], "--host", "0.0.0.0", "--port", 0)
    assert code == 0 and "md4: warning: --host 0.0.0.0 lets every machine" in err and "served" in err
    assert "run 0: text (text, step 2)" in err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
