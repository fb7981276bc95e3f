"""``tadastream speak -f book`` end to end on the demo model: chapters, audiobooks, folders,
read-along EPUBs, resume and parallel segments, as a narrator runs them."""

from __future__ import annotations

import json
import signal
import subprocess

import numpy as np
import pytest
import soundfile

from tests.cli.test_cli import FAST, TerminalRun, assert_user_error, run_cli
from tests.helpers.books import NAV_TITLES, build_epub, epubcheck_command

RATE = 24000

SPEAK = ["--model", "demo", "--seed", "3", *FAST]


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    return build_epub(tmp_path_factory.mktemp("book") / "book.epub")


@pytest.fixture(scope="module")
def audiobook(book, tmp_path_factory):
    """The book as an M4B with its timestamps (whose chapter starts the M4B's marks must match)."""
    folder = tmp_path_factory.mktemp("m4b")
    target, stamps = folder / "book.m4b", folder / "book.json"
    proc = run_cli("speak", "-f", book, "-o", target, "--timestamps", stamps, *SPEAK)
    assert proc.returncode == 0, proc.stderr
    return target, json.loads(stamps.read_text(encoding="utf-8")), proc.stderr


def test_list_chapters_prints_them_without_loading_a_model(book):
    proc = run_cli("speak", "-f", book, "--list-chapters", "--model", "HumeAI/not-downloaded")
    assert proc.returncode == 0, proc.stderr
    listing = proc.stdout.decode()
    assert all(title in listing for title in NAV_TITLES), listing
    assert "skipped: cover (cover.xhtml)" in listing and "3 chapters" in listing, listing


def test_an_epub_becomes_an_m4b_with_its_chapters_at_their_starts(audiobook):
    import av

    target, stamps, stderr = audiobook
    assert "wrote" in stderr and "chapter 3 of 3" not in stderr.split("wrote")[-1]
    chapters = stamps["chapters"]
    with av.open(str(target)) as container:
        marks = container.chapters()
        assert container.metadata.get("title") == stamps["title"]
        duration = container.duration / av.time_base
    assert [m["metadata"].get("title") for m in marks] == [c["title"] for c in chapters]
    frame = 1024 / RATE
    for mark, chapter in zip(marks, chapters):
        start = float(mark["start"] * mark["time_base"])
        assert abs(start - chapter["start"]) <= frame, (start, chapter["start"])
    assert abs(duration - stamps["audio_seconds"]) <= frame
    # every chapter's words are heard inside it
    for chapter in chapters:
        assert chapter["words"] and chapter["start"] <= chapter["words"][0]["start"]
        assert chapter["words"][-1]["end"] <= chapter["end"] + 1e-6


def test_parallel_segments_make_the_same_audio_as_one_at_a_time(book, tmp_path):
    one, four = tmp_path / "one.wav", tmp_path / "four.wav"
    for target, n in ((one, "1"), (four, "4")):
        proc = run_cli("speak", "-f", book, "-o", target, "--parallel", n, *SPEAK)
        assert proc.returncode == 0, proc.stderr
    a, rate = soundfile.read(one, dtype="int16")
    b, _ = soundfile.read(four, dtype="int16")
    assert rate == RATE and len(a) > RATE and np.array_equal(a, b)


def test_resume_after_ctrl_c_equals_the_uninterrupted_run(book, tmp_path):
    whole, resumed = tmp_path / "whole.wav", tmp_path / "resumed.wav"
    proc = run_cli("speak", "-f", book, "-o", whole, *SPEAK)
    assert proc.returncode == 0, proc.stderr
    run = TerminalRun("speak", "-f", book, "-o", resumed, "--resume", "--parallel", "1", *SPEAK)
    assert run.read_until(b"of the text"), "narration did not start"
    run.proc.send_signal(signal.SIGINT)
    code, shown = run.finish()
    assert code == 130 and "--resume to go on" in shown and "Traceback" not in shown, shown
    assert not resumed.exists() and (tmp_path / "resumed.wav.partial" / "state.json").exists()
    proc = run_cli("speak", "-f", book, "-o", resumed, "--resume", "--model", "demo", *FAST)  # the seed is kept
    assert proc.returncode == 0, proc.stderr
    assert "resuming after segment" in proc.stderr
    a, _ = soundfile.read(whole, dtype="int16")
    b, _ = soundfile.read(resumed, dtype="int16")
    assert len(a) == len(b) and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert not (tmp_path / "resumed.wav.partial").exists(), "the spool goes once the book is done"


def test_resume_refuses_a_changed_text(tmp_path):
    source, target = tmp_path / "t.txt", tmp_path / "t.wav"
    source.write_text("A first paragraph to speak.\n\nAnd a second one after it.\n", encoding="utf-8")
    spool = tmp_path / "t.wav.partial"
    spool.mkdir()
    (spool / "state.json").write_text(json.dumps({
        "fingerprint": {"text": "0" * 16, "voice": "", "model": "demo", "options": "", "seed": "3", "output": ".wav"},
        "done": 0, "samples": 0, "tokens": 0, "events_bytes": 0,
    }))
    proc = run_cli("speak", "-f", source, "-o", target, "--resume", *SPEAK)
    assert_user_error(proc, 2, "--resume", "the text", "changed", "remove")
    assert not target.exists()


@pytest.mark.skipif(epubcheck_command() is None, reason="epubcheck (and Java) is not installed; CI installs it")
def test_a_read_along_epub_passes_epubcheck(book, tmp_path):
    target, report = tmp_path / "readalong.epub", tmp_path / "report.json"
    proc = run_cli("speak", "-f", book, "-o", target, *SPEAK)
    assert proc.returncode == 0, proc.stderr
    done = subprocess.run(
        [*epubcheck_command(), str(target), "--json", str(report)], capture_output=True, text=True, timeout=180
    )
    messages = json.loads(report.read_text())["messages"]
    problems = [f"{m['severity']} {m['ID']}: {m['message']}" for m in messages if m["severity"] in ("FATAL", "ERROR")]
    assert done.returncode == 0 and not problems, "\n".join(problems) or done.stdout + done.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no work folder is left behind"


def test_a_folder_gets_a_file_per_chapter_and_a_playlist(book, tmp_path):
    folder = tmp_path / "chapters"
    proc = run_cli("speak", "-f", book, "-o", f"{folder}/", "--format", "wav", "--chapters", "2-3", *SPEAK)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 3 and files[-1] == "playlist.m3u8" and all(f.endswith(".wav") for f in files[:2])
    playlist = (folder / "playlist.m3u8").read_text(encoding="utf-8").splitlines()
    assert playlist[0] == "#EXTM3U" and files[0] in playlist and files[1] in playlist
    for name in files[:2]:
        audio, rate = soundfile.read(folder / name)
        assert rate == RATE and len(audio) > RATE // 2


def test_book_options_are_checked_before_any_work(book, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Some words.", encoding="utf-8")
    old = build_epub(tmp_path / "old.epub", epub2=True)
    cases = [
        (["-f", old, "-o", tmp_path / "x.epub"], "EPUB 3"),
        (["-f", text, "-o", tmp_path / "x.epub"], "read-along"),
        (["Hi.", "--resume", "-o", tmp_path / "x.wav"], "-f FILE"),
        (["-f", book, "--chapters", "9", "-o", tmp_path / "x.wav"], "chapters"),
        (["-f", book, "-o", tmp_path / "x.wav", "--timeline", tmp_path / "t.png"], "--timeline"),
        (["-f", book, "-o", tmp_path / "x.wav", "--format", "mp3"], "--format"),
        (["-f", book, "-o", tmp_path / "missing" / "x.m4b"], "does not exist"),
    ]
    for args, needle in cases:
        assert_user_error(run_cli("speak", *args, "--model", "demo"), 2, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.epub", "t.txt"]
