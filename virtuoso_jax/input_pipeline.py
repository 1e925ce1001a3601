"""Training and eval input: grain over `tfds.data_source`, windows or packing, augmentation.

Data flow (style.md §1, P7):
  prepared TFDS dataset (array_record) -> `tfds.data_source` -> `SongSource` (ids per song)
  -> a window index (which song, where) -> `BatchMaker(global batch index) -> local rows`
  (numpy only, runs in grain workers) -> grain prefetch -> in the main process only:
  `jax.make_array_from_process_local_data` (global arrays sharded over (data, fsdp)).

Determinism and multi-host: the global batch `b` is a pure function of (seed, b) and of the
window index, never of the number of processes. Each process reads and builds only its own rows
of every global batch (the rows its devices hold), so 2 hosts x 4 devices see exactly the data of
1 host x 8 devices, and a resumed run sees exactly the batches it would have seen.

Windowing (`config.data.windowing`):
  "window": every song is cut into windows of L+1 tokens (L = model.max_len) with stride L, so
    every target is predicted exactly once per epoch; a window never crosses into another song,
    and a song's first window starts at its BOS (BOS only ever sits at position 0, as when
    sampling). Each epoch shifts each song's window grid by a random phase d in 0..L-1 (a pure
    function of seed, epoch and song): the first window counts only the first L-d targets, the
    next ones start at tokens L-d, 2L-d, ..., and the last one is padded with PAD after the
    song's end (masked). So EOS is predicted at position (n-2+d) mod L, uniform over the window,
    and window starts fall at every phase of the notes. (The last window used to be slid back to
    end at the song's end: EOS was then always the target at position L-1, the model learnt
    "position L-1 => EOS" and 30-50% of the quickstart's samples stopped at exactly token L.)
    The phase costs about L/2 masked slots per song and epoch (bach_token: 8% more windows);
    epochs differ slightly in size (`BatchMaker.epoch_start`).
  "pack": songs (each BOS ... EOS, so boundaries stay visible to the model) are concatenated in a
    per-epoch random order and cut into L+1 chunks: no padding at all.
Eval always uses "window" with phase 0 over the eval split, in order, so it is deterministic and
covers every target once (EOS lands at position (n-2) mod L, varying with the song's length,
never slid back to L-1); the padding rows of the last batch are masked. Each eval row also
carries `seconds`, the music its scored targets span (`evaluation.target_seconds`), so the
trainer reports bits per second; over the whole split they sum to the songs' lengths. Eval
losses of runs made before this windowing (docs/benchmarks.md, "Where samples end") used
slid-back last windows (tail targets with more context, EOS at L-1) and are not exactly
comparable (benchmarks/eos_position_bench.py scores a run under both).

The iterator is a grain `DatasetIterator`: its state (position) is saved in checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator

import grain
import numpy as np

from virtuoso_jax import dataset
from virtuoso_jax import evaluation
from virtuoso_jax import tasks as tasks_lib

log = logging.getLogger(__name__)

# The batch each step sees (per process: its own rows).
#   inputs  int32[b, L]   tokens fed to the model
#   targets int32[b, L]   next tokens
#   mask    float32[b, L] 1 where the target counts in the loss (0 for PAD and overlaps)


class SongSource:
  """Random access to one split's songs as int32 id arrays (BOS ... EOS).

  Picklable (grain worker processes re-open the array_record files lazily).
  """

  def __init__(self, config, split: str, codec=None):
    self._name = dataset.dataset_name(config)
    self._data_dir = dataset.data_dir(config)
    self._split = split
    self._kind = config.data.encoding
    self._codec = codec
    self._source = None
    self._len = len(self._open())

  def _open(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      try:
        self._source = tfds.data_source(self._name, split=self._split, data_dir=self._data_dir)
      except ValueError as e:
        raise ValueError(f"cannot open split {self._split!r} of {self._name} in "
                         f"{self._data_dir}: {e}") from e
    return self._source

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def __len__(self) -> int:
    return self._len

  def _to_ids(self, record) -> np.ndarray:
    if self._kind == "token":
      return np.asarray(record["ids"], dtype=np.int32)
    text = record["text"]
    if isinstance(text, bytes):
      text = text.decode("utf-8")
    return np.asarray(char_ids(self._codec, text), dtype=np.int32)

  def __getitem__(self, i: int) -> np.ndarray:
    return self._to_ids(self._open()[int(i)])

  def get_many(self, indices) -> list[np.ndarray]:
    source = self._open()
    records = source.__getitems__([int(i) for i in indices])
    return [self._to_ids(r) for r in records]


def char_ids(codec, text: str) -> np.ndarray:
  """Char songs as ids, framed BOS ... EOS when the char codec defines them."""
  ids = np.asarray(codec.text_to_ids(text), dtype=np.int32)
  bos, eos = getattr(codec, "bos_id", None), getattr(codec, "eos_id", None)
  if bos is not None and (ids.size == 0 or ids[0] != bos):
    ids = np.concatenate([[bos], ids])
  if eos is not None and ids[-1] != eos:
    ids = np.concatenate([ids, [eos]])
  return ids.astype(np.int32)


def song_lengths(source: SongSource, chunk: int = 256) -> np.ndarray:
  """Lengths of every song of the split. Each process reads its share; results are gathered."""
  import jax  # pylint: disable=g-import-not-at-top  (main process only)
  n, pid, count = len(source), jax.process_index(), jax.process_count()
  mine = np.arange(pid, n, count)
  lengths = np.zeros(len(mine), dtype=np.int64)
  for s in range(0, len(mine), chunk):
    lengths[s:s + chunk] = [len(x) for x in source.get_many(mine[s:s + chunk])]
  if count == 1:
    return lengths
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  per = -(-n // count)
  padded = np.full(per, -1, np.int64)
  padded[:len(lengths)] = lengths
  gathered = np.asarray(multihost_utils.process_allgather(padded))  # [count, per]
  out = np.zeros(n, np.int64)
  for p in range(count):
    got = gathered[p][gathered[p] >= 0]
    out[p::count] = got
  return out


# ------------------------------------------------------------------ window index


@dataclasses.dataclass(frozen=True)
class WindowIndex:
  """Windows of L+1 tokens inside songs: song id, first token, counted target positions.

  Window w holds tokens song[start : start + L + 1]; its targets at positions
  mask_from[w] <= i < mask_to[w] count (the others are PAD or already counted elsewhere).
  """
  song: np.ndarray
  start: np.ndarray
  mask_from: np.ndarray
  mask_to: np.ndarray

  def __len__(self) -> int:
    return len(self.song)


def window_counts(lengths: np.ndarray, seq_len: int, phases: np.ndarray | None = None
                  ) -> np.ndarray:
  """Windows per song: ceil((n - 1 + phase) / L) (0 for songs with nothing to predict)."""
  targets = np.asarray(lengths, np.int64) - 1
  d = np.zeros_like(targets) if phases is None else np.asarray(phases, np.int64)
  return np.where(targets >= 1, (targets - 1 + d) // seq_len + 1, 0)


def build_windows(lengths: np.ndarray, seq_len: int,
                  phases: np.ndarray | None = None) -> WindowIndex:
  """Windows covering every target (positions 1..n-1) of every song exactly once.

  A song's targets are laid on a grid of L slots shifted by its phase d (0 <= d < L): target t
  sits in window (t - 1 + d) // L. The first window starts at the song's first token (BOS at
  position 0) and counts its first L - d targets; window w >= 1 starts at token w*L - d and
  counts L targets; the last one is padded after the song's end. So EOS, the last target, is
  predicted at position (n - 2 + d) mod L: with d = 0 (eval) that varies with the song's length,
  with a random d per (song, epoch) (training) it is uniform over 0..L-1. (Sliding the last
  window back to end at the song's end, as before, put EOS at position L-1 in every song longer
  than L+1, and the model learnt "position L-1 => EOS".)
  """
  n = np.asarray(lengths, np.int64)
  d = np.zeros_like(n) if phases is None else np.asarray(phases, np.int64)
  if np.any((d < 0) | (d >= seq_len)):
    raise ValueError(f"window phases must be in 0..{seq_len - 1}")
  counts = window_counts(n, seq_len, d)
  song = np.repeat(np.arange(len(n), dtype=np.int64), counts)
  first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
  w = np.arange(len(song), dtype=np.int64) - np.repeat(first, counts)
  start, mask_to = _window_span(n[song], d[song], w, seq_len)
  return WindowIndex(song, start, np.zeros_like(start), mask_to)


def _window_span(n, d, w, seq_len):
  """(first token, counted targets) of window w of a song of n tokens with phase d
  (numpy arrays or ints)."""
  start = np.where(w == 0, 0, w * seq_len - d)
  mask_to = np.minimum(np.where(w == 0, seq_len - d, seq_len), n - 1 - start)
  return start, mask_to


def window_phases(seed: int, epoch: int, num_songs: int, seq_len: int) -> np.ndarray:
  """Each song's window phase in epoch `epoch`: uniform in 0..L-1, a pure function of
  (seed, epoch, song) (splitmix64), so every process and worker computes the same."""
  with np.errstate(over="ignore"):
    x = (np.arange(num_songs, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
         + np.uint64(_seed(seed, epoch)) * np.uint64(0xD1B54A32D192ED03) + np.uint64(0x5851F42D))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
  return (x % np.uint64(seq_len)).astype(np.int64)


def _window_example(song_ids: np.ndarray, start: int, mask_from: int, mask_to: int,
                    seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.full(seq_len + 1, pad_id, np.int32)
  piece = song_ids[start:start + seq_len + 1]
  tokens[:len(piece)] = piece
  mask = np.zeros(seq_len, np.float32)
  mask[mask_from:min(mask_to, len(piece) - 1)] = 1.0
  return tokens, mask


# ------------------------------------------------------------------ batch makers (numpy only)


@dataclasses.dataclass
class BatchMaker:
  """Global batch index -> this process's rows. Pure numpy; safe in grain worker processes (P7).

  Attributes:
    source: the split's songs.
    index: window index (eval; window mode builds each epoch's own, see `window`).
    lengths: song lengths (window and pack modes).
    seq_len: L.
    global_batch: rows per global batch.
    rows: (lo, hi) the rows of each global batch this process builds.
    pad_id: the codec's PAD.
    mode: "window", "pack" or "eval".
    seed: shuffle / augmentation seed.
    transpose: max |shift| in semitones (0 = off).
    codec: needed for transposition, and in eval mode for the batch's `seconds` of music
      (without a codec an eval batch has none).
  """
  source: SongSource
  index: WindowIndex | None
  lengths: np.ndarray | None
  seq_len: int
  global_batch: int
  rows: tuple[int, int]
  pad_id: int
  mode: str
  seed: int
  transpose: int = 0
  codec: Any = None
  tasks: Any = None  # tasks.TaskRates: windows turned into infilling/accompaniment/attributes.

  def num_eval_batches(self) -> int:
    return -(-len(self.index) // self.global_batch)

  def __call__(self, b: int) -> dict[str, np.ndarray]:
    lo, hi = self.rows
    tokens = np.full((hi - lo, self.seq_len + 1), self.pad_id, np.int32)
    mask = np.zeros((hi - lo, self.seq_len), np.float32)
    # Each input position's target, as a position in its row (the next one, except where a
    # derived example's controls follow: `tasks.lookahead_targets`).
    source = np.tile(np.arange(1, self.seq_len + 1, dtype=np.int32), (hi - lo, 1))
    # Eval: the seconds of music each scored target accounts for (rank 2, like the mask, so it
    # shards the same way). Train batches have none.
    seconds = (np.zeros((hi - lo, self.seq_len), np.float32)
               if self.mode == "eval" and self.codec is not None else None)
    for r in range(lo, hi):
      j = int(b) * self.global_batch + r  # Global sample number.
      if self.mode == "pack":
        t = self._pack_chunk(j)
        m = (t[1:] != self.pad_id).astype(np.float32)
      else:
        if self.mode == "eval":
          if j >= len(self.index):
            continue  # Padding row: fully masked.
          ix = self.index
          s, st, mf, mt = ix.song[j], ix.start[j], ix.mask_from[j], ix.mask_to[j]
        else:
          s, st, mf, mt = self.window(j)
        t, m = _window_example(self._song(int(s)), int(st), int(mf), int(mt), self.seq_len,
                               self.pad_id)
        if self.tasks is not None and self.mode == "window":
          derived = tasks_lib.derive(self.codec, t, self.seq_len, self.tasks,
                                     np.random.default_rng([self.seed, 11, j]))
          if derived is not None:
            t, m, source[r - lo] = derived
        if seconds is not None:
          scored = np.flatnonzero(m)
          seconds[r - lo, scored] = self._target_seconds(int(s))[int(st) + scored]
      if self.transpose:
        t = self._transpose(t, j)
      tokens[r - lo], mask[r - lo] = t, m
    batch = {"inputs": tokens[:, :-1], "targets": np.take_along_axis(tokens, source, axis=1),
             "mask": mask}
    if seconds is not None:
      batch["seconds"] = seconds
    return batch

  # Window mode: epoch e lays every song's targets on a grid shifted by the song's phase
  # window_phases(seed, e) (see build_windows), so an epoch holds a few more windows than
  # ceil((n - 1) / L) per song and epochs differ in size; epoch e covers global samples
  # epoch_start(e) .. epoch_start(e + 1) - 1, its windows shuffled by index_shuffle.

  def epoch_windows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative window counts per song [S + 1], phases [S]) of a window-mode epoch."""
    cache = self.__dict__.setdefault("_window_cache", {})
    if epoch not in cache:
      cache.clear()
      phases = window_phases(self.seed, epoch, len(self.lengths), self.seq_len)
      counts = window_counts(self.lengths, self.seq_len, phases)
      cache[epoch] = (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), phases)
    return cache[epoch]

  def epoch_index(self, epoch: int) -> WindowIndex:
    """Every window of a window-mode epoch, in song order (before shuffling)."""
    return build_windows(self.lengths, self.seq_len, self.epoch_windows(epoch)[1])

  def epoch_start(self, epoch: int) -> int:
    """The global sample number where window-mode epoch `epoch` starts."""
    starts = self.__dict__.setdefault("_epoch_starts", [0])
    while len(starts) <= epoch:
      e = len(starts) - 1
      phases = window_phases(self.seed, e, len(self.lengths), self.seq_len)
      starts.append(starts[-1] + int(window_counts(self.lengths, self.seq_len, phases).sum()))
    return starts[epoch]

  def window(self, j: int) -> tuple[int, int, int, int]:
    """Window mode: (song, start, mask_from, mask_to) of global sample j."""
    starts = self.__dict__.setdefault("_epoch_starts", [0])
    while starts[-1] <= j:
      self.epoch_start(len(starts))
    epoch = int(np.searchsorted(starts, j, side="right")) - 1
    cum, phases = self.epoch_windows(epoch)
    n = int(cum[-1])
    w = grain.experimental.index_shuffle(j - starts[epoch], max_index=n - 1,
                                         seed=_seed(self.seed, epoch), rounds=4)
    s = int(np.searchsorted(cum, w, side="right")) - 1
    start, mask_to = _window_span(int(self.lengths[s]), int(phases[s]), w - int(cum[s]),
                                  self.seq_len)
    return s, int(start), 0, int(mask_to)

  def _transpose(self, tokens: np.ndarray, j: int) -> np.ndarray:
    lo, hi = self.codec.pitch_shift_range(tokens)
    lo, hi = max(int(lo), -self.transpose), min(int(hi), self.transpose)
    if lo > hi:
      return tokens
    shift = int(np.random.default_rng([self.seed, 7, j]).integers(lo, hi + 1))
    if shift == 0:
      return tokens
    return np.asarray(self.codec.transpose_ids(tokens, shift), np.int32)

  def _epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    cache = self.__dict__.setdefault("_order_cache", {})
    if epoch in cache:
      return cache[epoch]
    cache.clear()
    n = len(self.lengths)
    order = np.asarray([grain.experimental.index_shuffle(i, max_index=n - 1,
                                                         seed=_seed(self.seed, epoch), rounds=4)
                        for i in range(n)], np.int64)
    cum = np.concatenate([[0], np.cumsum(self.lengths[order])])
    cache[epoch] = (order, cum)
    return order, cum

  def chunks_per_epoch(self) -> int:
    return max(1, (int(np.sum(self.lengths)) - 1) // self.seq_len)

  def _pack_chunk(self, j: int) -> np.ndarray:
    per = self.chunks_per_epoch()
    epoch, k = divmod(j, per)
    k = grain.experimental.index_shuffle(k, max_index=per - 1, seed=_seed(self.seed + 1, epoch),
                                         rounds=4)
    return self.stream_chunk(epoch, k)

  def stream_chunk(self, epoch: int, k: int) -> np.ndarray:
    """Tokens k*L .. k*L+L of epoch `epoch`'s stream (its songs concatenated in shuffled order)."""
    order, cum = self._epoch_order(epoch)
    begin, end = k * self.seq_len, k * self.seq_len + self.seq_len + 1
    out = np.full(self.seq_len + 1, self.pad_id, np.int32)
    s = int(np.searchsorted(cum, begin, side="right")) - 1
    pos = begin
    while pos < end and s < len(order):
      song = self._song(int(order[s]))
      off = pos - int(cum[s])
      piece = song[off:off + (end - pos)]
      out[pos - begin:pos - begin + len(piece)] = piece
      pos += len(piece)
      s += 1
    return out

  def _song(self, i: int) -> np.ndarray:
    """Song `i`; the last one read is kept (eval and packing read the same song repeatedly)."""
    last = self.__dict__.get("_last_song")
    if last is not None and last[0] == i:
      return last[1]
    ids = self.source[i]
    self.__dict__["_last_song"] = (i, ids)
    return ids

  def _target_seconds(self, i: int) -> np.ndarray:
    """evaluation.target_seconds of song `i` (the last one computed is kept)."""
    last = self.__dict__.get("_last_seconds")
    if last is None or last[0] != i:
      last = (i, evaluation.target_seconds(self.codec, self._song(i)))
      self.__dict__["_last_seconds"] = last
    return last[1]


def _seed(seed: int, epoch: int) -> int:
  return (int(seed) * 1_000_003 + int(epoch)) % (2**32)


# ------------------------------------------------------------------ the pipeline


@dataclasses.dataclass
class DataInfo:
  """What training needs to know about the data."""
  codec: Any
  kind: str  # "token" or "char".
  vocab_size: int
  pad_id: int
  tokens_per_note: float | None  # Token codec: ids per note.
  note_end_id: int | None  # Char codec: the id ending every note line ("\n").
  num_train_songs: int
  num_train_windows: int  # Window mode: epoch 0's windows (epochs differ a little); else len(index).
  num_eval_windows: int
  train_tokens: int
  unigram_log_probs: np.ndarray  # float32[V], from the train split's target frequencies.


def local_rows(sharding, global_batch: int) -> tuple[int, int]:
  """The contiguous rows of a global [global_batch, ...] batch that this process's devices hold."""
  import jax  # pylint: disable=g-import-not-at-top
  idx = sharding.addressable_devices_indices_map((global_batch, 1))
  starts = sorted({(s[0].start or 0, s[0].stop if s[0].stop is not None else global_batch)
                   for s in idx.values()})
  lo, hi = starts[0][0], starts[-1][1]
  covered = sum(b - a for a, b in starts)
  if covered != hi - lo:
    raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows {starts}; "
                     "use a mesh whose (data, fsdp) devices are grouped by process")
  return lo, hi


class InputPipeline:
  """Train iterator (checkpointable grain iterator) + eval batches, as global jax arrays."""

  def __init__(self, config, *, batch_sharding, codec=None, train_sources=None):
    import jax  # pylint: disable=g-import-not-at-top
    self.config = config
    self.sharding = batch_sharding
    self.seq_len = config.model.max_len
    self.global_batch = config.batch_size
    self.rows = local_rows(batch_sharding, self.global_batch)
    self.codec = codec if codec is not None else dataset.load_codec(config)
    kind = config.data.encoding
    d = config.data
    train = SongSource(config, d.train_split, self.codec)
    evals = SongSource(config, d.eval_split, self.codec)
    if len(train) == 0:
      raise ValueError(f"split {d.train_split!r} of {dataset.dataset_name(config)} is empty")
    train_lengths = song_lengths(train)
    eval_lengths = song_lengths(evals)
    self.train_index = build_windows(train_lengths, self.seq_len)
    self.eval_index = build_windows(eval_lengths, self.seq_len)
    pad = int(self.codec.pad_id)
    vocab = int(self.codec.vocab_size)
    rates = tasks_lib.TaskRates.from_config(config)
    if rates.any and getattr(self.codec, "version", 1) < 2:
      raise ValueError("data.*_rate > 0 needs a version-2+ token codec "
                       "(dataset.load_codec(config) builds it)")
    self.train_maker = BatchMaker(
        source=train, index=self.train_index, lengths=train_lengths, seq_len=self.seq_len,
        global_batch=self.global_batch, rows=self.rows, pad_id=pad, mode=d.windowing,
        seed=config.seed, transpose=d.transpose_semitones if kind == "token" else 0,
        codec=self.codec, tasks=rates if rates.any else None)
    self.eval_maker = BatchMaker(
        source=evals, index=self.eval_index, lengths=eval_lengths, seq_len=self.seq_len,
        global_batch=self.global_batch, rows=self.rows, pad_id=pad, mode="eval",
        seed=config.seed, codec=self.codec)
    counts = self._unigram_counts(train, vocab)
    probs = (counts + 1.0) / (counts.sum() + vocab)  # Add-one smoothing.
    note_end = None
    tpn = None
    if kind == "token":
      tpn = float(self.codec.tokens_per_note)
    else:
      note_end = int(np.asarray(self.codec.text_to_ids("\n"))[-1])
    self.info = DataInfo(
        codec=self.codec, kind=kind, vocab_size=vocab, pad_id=pad, tokens_per_note=tpn,
        note_end_id=note_end, num_train_songs=len(train),
        num_train_windows=(self.train_maker.epoch_start(1) if d.windowing == "window"
                           else len(self.train_index)),
        num_eval_windows=len(self.eval_index), train_tokens=int(train_lengths.sum()),
        unigram_log_probs=np.log(probs).astype(np.float32))
    del jax

  def _unigram_counts(self, source: SongSource, vocab: int, chunk: int = 256) -> np.ndarray:
    import jax  # pylint: disable=g-import-not-at-top
    counts = np.zeros(vocab, np.float64)
    mine = np.arange(jax.process_index(), len(source), jax.process_count())
    for s in range(0, len(mine), chunk):
      for ids in source.get_many(mine[s:s + chunk]):
        counts += np.bincount(ids[1:], minlength=vocab)[:vocab]
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      counts = np.asarray(multihost_utils.process_allgather(counts)).sum(0)
    return counts

  def train_iterator(self, num_batches: int | None = None) -> grain.DatasetIterator:
    """A checkpointable iterator over this process's rows of global batches 0, 1, 2, ..."""
    n = num_batches if num_batches is not None else self.config.num_train_steps
    ds = grain.MapDataset.range(n).map(self.train_maker).to_iter_dataset()
    d = self.config.data
    if d.worker_count > 0:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.worker_count,
                                                        per_worker_buffer_size=max(1, d.prefetch)))
    elif d.prefetch > 0:
      ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=d.prefetch)
    return iter(ds)

  def num_eval_batches(self) -> int:
    n = self.eval_maker.num_eval_batches()
    cap = self.config.num_eval_batches
    return min(n, cap) if cap else n

  def eval_batches(self) -> Iterator[dict[str, Any]]:
    """The deterministic eval batches (global arrays), same on every call."""
    ds = grain.MapDataset.range(self.num_eval_batches()).map(self.eval_maker).to_iter_dataset()
    if self.config.data.prefetch > 0:
      ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=2)
    for local in ds:
      yield self.to_global(local)

  def to_global(self, local: dict[str, np.ndarray]) -> dict[str, Any]:
    """Host rows -> global jax arrays sharded over (data, fsdp). Main process only (P7)."""
    import jax  # pylint: disable=g-import-not-at-top
    return {k: jax.make_array_from_process_local_data(self.sharding, v,
                                                      (self.global_batch,) + v.shape[1:])
            for k, v in local.items()}
