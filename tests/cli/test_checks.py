"""The command line checks everything before the model loads, in one line that names the value.

Run in-process (``tadastream.cli.main``), so each case costs milliseconds: a check that would
only fail after loading is caught by a loader that fails the test. The few runs that generate use
the embedded demo model; Ctrl-C needs a real process and is in test_cli.py.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import pytest
import soundfile

from tadastream.cli import main
from tests.helpers.paths import FIXTURES

FAST = ["--flow-steps", "2"]
SAMPLE = FIXTURES / "ljspeech.flac"


def run(capsys, *args: object) -> tuple[int, str]:
    """``tadastream ARGS`` in-process: (exit status, the one ``error:`` line, or "" when none)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's refusals end the program as they would from a shell
        code = exc.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) <= 1 and "Traceback" not in err, err
    if errors:
        assert err.strip().splitlines()[-1] == errors[0], "the error is the last word"
    return code, errors[0] if errors else ""


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model or an encoder is loaded: these errors must come before that work."""
    import tadastream.cli.commands
    import tadastream.loading

    def loaded(*_args, **_kwargs):
        pytest.fail("loaded a model before refusing the command line")

    monkeypatch.setattr(tadastream.loading, "load_model", loaded)
    monkeypatch.setattr(tadastream.cli.commands, "_encode_recording", loaded)


def _writable(folder: Path) -> bool:
    probe = folder / ".tadastream-probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except OSError:
        return False
    probe.unlink()
    return True


@pytest.fixture
def unwritable(tmp_path):
    """A folder no file can be made in: read-only by its mode, or (as root, whom modes do not stop)
    a read-only file system such as /sys, which the permission bits wrongly call writable."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        found = next((f for f in (folder, Path("/sys"), Path("/proc")) if f.is_dir() and not _writable(f)), None)
        if found is None:
            pytest.skip("no unwritable folder on this machine")
        yield found
    finally:
        folder.chmod(0o755)


# ------------------------------------------------------------------------------------------------
# numbers: the server's ranges (tadastream.limits), refused by the parser


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--flow-steps", "100000", "a whole number from 1 to 64"),
        ("--flow-steps", "0", "a whole number from 1 to 64"),
        ("--seed", "99999999999999999999999", "a whole number from 0 to 9223372036854775807"),
        ("--seed", "-1", "a whole number from 0 to 9223372036854775807"),
        ("--speed", "100", "a number from 0.25 to 4"),
        ("--speed", "0.1", "a number from 0.25 to 4"),
        ("--speed", "nan", "a number from 0.25 to 4"),
        ("--temperature", "1000", "a number above 0 and at most 100"),
        ("--temperature", "0", "a number above 0 and at most 100"),
        ("--noise-temperature", "11", "a number from 0 to 10"),
        ("--cfg-scale", "1e9", "a number from -100 to 100"),
        ("--transition-steps", "-1", "a whole number >= 0"),
    ],
)
def test_numbers_outside_the_servers_range_fail_at_once(capsys, tmp_path, no_loading, flag, value, expected):
    code, line = run(capsys, "speak", "Hi.", "--model", "demo", "-o", tmp_path / "x.wav", flag, value)
    assert code == 2
    assert line == f"error: argument {flag}: expected {expected}, got {value!r}; see `tadastream speak --help`"
    assert not list(tmp_path.iterdir())


def test_demo_seed_has_the_same_range(capsys, no_loading):
    code, line = run(capsys, "demo", "--seed", "-1")
    assert code == 2 and "--seed" in line and "from 0 to 9223372036854775807, got '-1'" in line


@pytest.mark.parametrize(
    "flag, value, said",
    [
        ("--realtime-margin", "0.5", "--realtime-margin must be a number >= 1, got 0.5"),  # the server's own check
        ("--send-timeout", "0", "--send-timeout must be a number of seconds > 0, got 0.0"),
        ("--first-audio-boost", "x", "argument --first-audio-boost: invalid choice: 'x'"),  # argparse's
    ],
)
def test_serve_refuses_a_bad_option_as_a_usage_error(capsys, no_loading, flag, value, said):
    """As ``wyoming`` and ``ray`` do: status 2 and one line on stderr, whichever check finds it."""
    try:
        code = main(["serve", "--model", "demo", flag, value])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and said in err, err


def test_serve_failing_to_load_its_model_is_a_failure(capsys, monkeypatch):
    """The options were good: a checkpoint that cannot be loaded is status 1, not a usage error."""
    import tadastream.loading

    def unloadable(*_args, **_kwargs):
        raise ValueError("the checkpoint has no weights")

    monkeypatch.setattr(tadastream.loading, "load_model", unloadable)
    code, line = run(capsys, "serve", "--model", "demo")
    assert (code, line) == (1, "error: the checkpoint has no weights")



@pytest.mark.parametrize("flag", ["--model", "--codec", "--tokenizer", "--encoder"])
def test_serve_refuses_a_checkpoint_folder_that_does_not_exist(capsys, no_loading, tmp_path, flag):
    """As ``speak`` does: status 2 and one line, before the model loads."""
    missing = tmp_path / "nonexistent"
    args = ["serve", flag, missing] if flag == "--model" else ["serve", "--model", "demo", flag, missing]
    code, line = run(capsys, *args)
    assert code == 2 and line.startswith(f"error: {flag} {missing}: no such directory"), line


@pytest.mark.parametrize("package", ["fastapi", "uvicorn", "prometheus_client"])
def test_serve_without_the_server_extra_says_how_to_install(capsys, monkeypatch, no_loading, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if the extra were not installed
    code, line = run(capsys, "serve", "--model", "demo")
    assert code == 2 and package in line and 'pip install "tadastream[server]"' in line, line

def test_the_cli_and_the_server_share_one_table(demo_model):
    """The edges the parser accepts are the server's: one past them both refuse."""
    from tadastream.cli import build_parser
    from tadastream.limits import MAX_SEED, OPTION_LIMITS, SPEED_RANGE
    from tadastream.service import RequestRefused, check_seed, inference_options

    parse = build_parser().parse_args
    steps = OPTION_LIMITS["num_flow_matching_steps"]
    args = parse(["speak", "x", "--flow-steps", str(steps), "--seed", str(MAX_SEED), "--speed", str(SPEED_RANGE[1])])
    options = inference_options({"num_flow_matching_steps": args.flow_steps}, args.speed, demo_model)
    assert options.num_flow_matching_steps == steps and check_seed(args.seed) == MAX_SEED
    for refused in ({"num_flow_matching_steps": steps + 1}, {"speed_up_factor": SPEED_RANGE[1] + 0.01}):
        with pytest.raises(RequestRefused):
            inference_options(refused, None, demo_model)
    with pytest.raises(RequestRefused):
        check_seed(MAX_SEED + 1)


# ------------------------------------------------------------------------------------------------
# output files: tried before loading, and named as the user gave them


@pytest.mark.parametrize(
    "command, flag, name",
    [
        ("speak", "-o", "foo.wav"),
        ("speak", "--subtitles", "x.vtt"),
        ("speak", "--timestamps", "x.json"),
        ("speak", "--timeline", "x.png"),
        ("demo", "-o", "d.wav"),
        ("encode-voice", "-o", "a.voice"),
    ],
)
def test_an_unwritable_output_fails_before_loading(capsys, tmp_path, unwritable, no_loading, command, flag, name):
    target = unwritable / name
    if command == "speak":
        args = ["speak", "Hi.", "--model", "demo", flag, target]
        if flag != "-o":
            args += ["-o", tmp_path / "x.wav"]  # a good -o is tried too, and its probe is not left behind
    elif command == "demo":
        args = ["demo", flag, target]
    else:
        args = ["encode-voice", SAMPLE, "--text", "Hi.", "--codec", "demo", flag, target]
    code, line = run(capsys, *args)
    assert code == 2
    assert line.startswith(f"error: {flag} {target}: cannot write in folder {unwritable} (")
    assert line.endswith("); choose another place")
    assert [p.name for p in tmp_path.iterdir()] == ["read-only"]
    assert not list((tmp_path / "read-only").iterdir())


def test_folders_where_files_are_wanted(capsys, tmp_path, no_loading):
    cases = [
        (["speak", "-f", tmp_path], f"-f {tmp_path}: that is a folder; give the path of a text file (or - for stdin)"),
        (["speak", "Hi.", "-o", tmp_path], f"-o {tmp_path}: that is a folder; give a file name in it, e.g. -o"),
        (["speak", "Hi.", "-o", "-", "--subtitles", tmp_path], f"--subtitles {tmp_path}: that is a folder"),
        (["encode-voice", SAMPLE, "--text", "Hi.", "-o", tmp_path], f"-o {tmp_path}: that is a folder"),
    ]
    for args, expected in cases:
        code, line = run(capsys, *args, "--model" if args[0] == "speak" else "--codec", "demo")
        assert code == 2 and line.startswith(f"error: {expected}"), line
        assert "unknown audio extension" not in line and "no such file" not in line
    assert not list(tmp_path.iterdir())


def test_the_words_to_speak(capsys, tmp_path, monkeypatch, no_loading):
    code, line = run(capsys, "speak", "--model", "demo")
    assert (code, line) == (2, "error: no text: give the words to speak as TEXT, - to read them from stdin, or -f FILE")
    (tmp_path / "t.txt").write_text("Hello.")
    code, line = run(capsys, "speak", "Hi.", "-f", tmp_path / "t.txt", "--model", "demo")
    assert (code, line) == (2, "error: give the words either as TEXT or with -f FILE, not both")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\U0001f600\n".encode())))
    code, line = run(capsys, "speak", "-f", "-", "--model", "demo", "-o", tmp_path / "x.wav")
    assert code == 2 and line.startswith("error: -f - has nothing to speak"), "read stdin, not a file named -"


# ------------------------------------------------------------------------------------------------
# writes that fail anyway (the folder removed while generating): the audio first, the file named


def _removing_after_load(monkeypatch, folder: Path) -> None:
    """Remove ``folder`` once the model is loaded: the checks passed, the write will fail."""
    import tadastream.loading

    real = tadastream.loading.load_model

    def load_then_remove(*args, **kwargs):
        loaded = real(*args, **kwargs)
        shutil.rmtree(folder)
        return loaded

    monkeypatch.setattr(tadastream.loading, "load_model", load_then_remove)


def test_a_failed_subtitles_write_keeps_the_audio(capsys, tmp_path, monkeypatch):
    audio, captions = tmp_path / "audio", tmp_path / "captions"
    audio.mkdir()
    captions.mkdir()
    _removing_after_load(monkeypatch, captions)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Hello there.\n")))
    out, srt, stamps = audio / "out.wav", captions / "out.srt", audio / "out.json"
    code, line = run(
        capsys, "speak", "-f", "-", "--model", "demo", "-o", out, "--subtitles", srt, "--timestamps", stamps, *FAST
    )
    assert code == 1
    assert line == f"error: could not write --subtitles {srt} (No such file or directory); the audio is in {out}"
    samples, rate = soundfile.read(out)
    assert rate == 24000 and len(samples) > 0, "the audio was written first"
    assert stamps.read_text().startswith("{"), "the other files are written all the same"
    assert sorted(p.name for p in audio.iterdir()) == ["out.json", "out.wav"]


def test_a_failed_audio_write_names_the_file_asked_for(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "gone"
    folder.mkdir()
    _removing_after_load(monkeypatch, folder)
    code, line = run(capsys, "speak", "Hello.", "--model", "demo", "-o", folder / "out.wav", *FAST)
    assert code == 1
    assert line == (
        f"error: could not write {folder / 'out.wav'} (No such file or directory); check the folder and the free space"
    )


def test_a_failed_voice_write_names_the_file(capsys, tmp_path, monkeypatch):
    import tadastream.cli.commands

    folder = tmp_path / "gone"
    folder.mkdir()
    samples, rate = soundfile.read(SAMPLE)
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, samples[: rate // 2], rate)  # half a second keeps the random encoder quick
    real = tadastream.cli.commands._encode_recording

    def encode_then_remove(*args, **kwargs):
        encoded = real(*args, **kwargs)
        shutil.rmtree(folder)
        return encoded

    monkeypatch.setattr(tadastream.cli.commands, "_encode_recording", encode_then_remove)
    code, line = run(
        capsys, "encode-voice", clip, "--text", "The examination", "--codec", "demo", "-o", folder / "a.voice"
    )
    assert code == 1
    assert line.startswith(f"error: -o {folder / 'a.voice'}: could not write the voice (")
    assert "SafetensorError" not in line and "unexpected" not in line


def test_ctrl_c_is_one_line_that_says_what_was_kept(capsys, tmp_path, monkeypatch):
    """Ctrl-C after the first chunk (a real SIGINT is in test_cli.py): one line, the part kept named."""
    from tadastream.cli.sinks import FileSink

    write = FileSink.write

    def write_then_interrupt(self, chunk):
        write(self, chunk)
        raise KeyboardInterrupt

    monkeypatch.setattr(FileSink, "write", write_then_interrupt)
    out, srt = tmp_path / "out.wav", tmp_path / "out.srt"
    code = main(["speak", "Hello there, and again.", "--model", "demo", "-o", str(out), "--subtitles", str(srt), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1 and err[0].startswith("interrupted: kept the first "), err
    assert err[0].endswith(f" s in {out}")
    samples, rate = soundfile.read(out)
    assert rate == 24000 and len(samples) > 0 and srt.exists()
