"""The automaton a codec's sequences follow: what the sampler needs to only ever emit ids that
decode (numpy only). Both codecs build one (`TokenCodec.grammar()`, `CharCodec.grammar()`);
virtuoso_jax.sampling runs it inside the compiled sampling loop.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Grammar:
  """A finite automaton over a codec's ids.

  Attributes:
    allowed: bool[S, V], the ids legal in each state (every state has at least one).
    next_state: int32[S, V], the state after emitting an id (illegal ids: `end_state`, or 0).
    completes_note: bool[S, V], emitting the id in that state ends a note.
    advance: int32[S, V], grid units the id advances time in that state.
    start_state: the state at the start of a song body (after BOS / after a header line).
    boundary_state: the state between notes: cutting before an id emitted here never splits
      a note (token codec: EOS is legal only here).
    eos_id: the stop id (-1: none, e.g. the char codec).
    pad_id: what a stopped row emits.
    end_state: after EOS only PAD is legal (-1: no such state).
    header_state: the char codec's state inside a `SONG=` header line (-1: none).
    bos_id: the id a token sequence may start with (-1: none).
  """

  allowed: np.ndarray
  next_state: np.ndarray
  completes_note: np.ndarray
  advance: np.ndarray
  start_state: int
  boundary_state: int
  eos_id: int
  pad_id: int
  end_state: int = -1
  header_state: int = -1
  bos_id: int = -1

  @property
  def num_states(self) -> int:
    return self.allowed.shape[0]

  @property
  def vocab_size(self) -> int:
    return self.allowed.shape[1]

  def walk(self, ids: Sequence[int], state: Optional[int] = None) -> tuple[int, np.ndarray]:
    """(state after `ids`, bool boundary flag per id) starting from `state` (default start).

    Raises ValueError naming the position of an id that is illegal where it stands.
    """
    state = self.start_state if state is None else int(state)
    ids = np.asarray(ids, np.int64).reshape(-1)
    flags = np.zeros(len(ids), bool)
    for i, t in enumerate(ids.tolist()):
      if not 0 <= t < self.vocab_size or not self.allowed[state, t]:
        raise ValueError(f"id {t} at position {i} is not legal in grammar state {state} "
                         "(a prompt must follow the codec's grammar)")
      flags[i] = state == self.boundary_state
      state = int(self.next_state[state, t])
    return state, flags

  def state_after(self, ids: Iterable[int]) -> int:
    """The state after a prefix (a leading BOS is skipped). ValueError on an illegal id."""
    ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
    if len(ids) and self.bos_id >= 0 and ids[0] == self.bos_id:
      ids = ids[1:]
    return self.walk(ids)[0]
