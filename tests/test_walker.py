"""The walker: recursion, extension filter, symlink loops, FIFOs, path lists, streaming."""

from __future__ import annotations

import io
import os
import types

import pytest

from dfscan.scanner import Chunk, RootNotFound, WalkOptions, chunked, read_path_list, walk

OPTS = WalkOptions(extensions=(".jpg", ".jpeg", ".png"))


def touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_recursive_filtered_sorted_and_case_insensitive(tmp_path):
    touch(tmp_path / "b" / "2.JPG")
    touch(tmp_path / "a" / "deep" / "er" / "1.jpeg")
    touch(tmp_path / "a" / "notes.txt")
    touch(tmp_path / "c.Png")
    got = list(walk([tmp_path], OPTS))
    assert got == [
        str(tmp_path / "a" / "deep" / "er" / "1.jpeg"),
        str(tmp_path / "b" / "2.JPG"),
        str(tmp_path / "c.Png"),
    ]


def test_a_file_root_is_taken_whatever_its_extension(tmp_path):
    f = touch(tmp_path / "photo.dat")
    assert list(walk([f], OPTS)) == [str(f)]


def test_missing_root_is_a_setup_error(tmp_path):
    with pytest.raises(RootNotFound, match="no such file"):
        list(walk([tmp_path / "nope"], OPTS))


def test_symlink_loops_end_and_links_are_followed(tmp_path):
    touch(tmp_path / "real" / "a.jpg")
    os.symlink(tmp_path / "real", tmp_path / "real" / "loop")  # real/loop -> real
    os.symlink(tmp_path / "real", tmp_path / "alias")
    got = list(walk([tmp_path], OPTS))
    # The loop is cut on its own branch; the alias is a second name of the same file.
    assert got == [str(tmp_path / "alias" / "a.jpg"), str(tmp_path / "real" / "a.jpg")]
    no_follow = WalkOptions(extensions=OPTS.extensions, follow_symlinks=False)
    assert list(walk([tmp_path], no_follow)) == [str(tmp_path / "real" / "a.jpg")]


def test_fifo_with_image_name_is_yielded_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    # Yielded so that the reader records it as an error row; listing must not block.
    assert list(walk([tmp_path], OPTS)) == [str(tmp_path / "pipe.jpg")]


def test_dangling_symlink_is_yielded_for_an_error_row(tmp_path):
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    assert list(walk([tmp_path], OPTS)) == [str(tmp_path / "link.jpg")]


def test_walk_is_a_lazy_generator(tmp_path):
    for i in range(50):
        touch(tmp_path / f"d{i % 5}" / f"{i}.jpg")
    it = walk([tmp_path], OPTS)
    assert isinstance(it, types.GeneratorType)
    first = next(it)
    assert first.endswith(".jpg")


def test_path_list_from_file_and_stdin(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\n/abs/a.jpg\n\nrel/b.jpg\n")
    got = list(read_path_list(listing))
    assert got == ["/abs/a.jpg", os.path.abspath("rel/b.jpg")]
    assert list(read_path_list("-", stdin=io.StringIO("/x/y.png\n"))) == ["/x/y.png"]


def test_chunked_sizes_and_duplicates():
    paths = [f"/p/{i}.jpg" for i in range(10)] + ["/p/3.jpg"]
    chunks = list(chunked(paths, 4))
    assert [len(c) for c in chunks] == [4, 4, 3]
    assert chunks[2] == ["/p/8.jpg", "/p/9.jpg", "/p/3.jpg"]  # a repeat across chunks is left to the upsert
    assert list(chunked(["/a", "/a", "/b"], 4)) == [["/a", "/b"]]


def test_chunk_message_round_trip():
    c = Chunk(scan_id=3, seq=1, paths=("/a.jpg", "/b,\"c\".jpg"), chunk_id=9)
    assert Chunk.from_message(c.to_message()) == c


def test_names_that_are_not_utf8_are_stored_reversibly(tmp_path):
    from dfscan.scanner.paths import on_disk, storable
    from dfscan.workers.reading.reader import read_file

    raw = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg"))
    with open(raw, "wb") as f:
        f.write(b"bytes")
    (walked,) = list(walk([tmp_path], OPTS))
    (chunk,) = list(chunked([walked], 8))
    assert chunk == [storable(raw)] and chunk[0].endswith("caf\\xe9.jpg")
    chunk[0].encode("utf-8")  # storable in SQL and JSON
    assert on_disk(chunk[0]) == raw
    assert read_file(chunk[0]).data == b"bytes"
    assert storable("/plain/é.jpg") == "/plain/é.jpg"


def test_walking_memory_does_not_grow_with_the_archive(tmp_path):
    """Ten times the files, no directory larger: memory follows the largest directory, not the archive."""
    import tracemalloc

    def tree(root, top, sub):
        for d in range(top):
            for e in range(sub):
                folder = root / f"d{d:02}" / f"e{e:02}"
                folder.mkdir(parents=True)
                for i in range(100):
                    (folder / f"{i:03}.jpg").touch()
        return root

    def peak(root):
        tracemalloc.start()
        count = sum(1 for _ in chunked(walk([root], OPTS), 256))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return count, top

    small_n, small = peak(tree(tmp_path / "small", 10, 1))
    big_n, big = peak(tree(tmp_path / "big", 10, 10))
    assert (small_n, big_n) == (4, 40)  # 1,000 and 10,000 files in chunks of 256
    assert big < 1.3 * small, (small, big)  # holding the paths would take about 10 times as much


def test_the_progress_total_walks_folders_but_never_lists_a_bucket_again(tmp_path) -> None:
    from dfscan.scanner import ScanSource

    for name in ("a.jpg", "b.png", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    options = WalkOptions((".jpg", ".png"))
    assert ScanSource((str(tmp_path),), (), options).count() == 2
    # No store is reachable at this endpoint: a listing would raise, so None says nothing was asked.
    s3 = WalkOptions((".jpg",), s3_endpoint_url="http://127.0.0.1:9")
    assert ScanSource((str(tmp_path), "s3://bucket/photos"), (), s3).count() is None
