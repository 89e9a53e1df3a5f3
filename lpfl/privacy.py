"""Privacy for adapter updates: the settings of secure aggregation and differential privacy, the
privacy accountant, and the noise.

Both are options of the round rules (``[server.round.privacy]`` in the run file,
:class:`PrivacyRules`), so a server run and ``lpfl simulate`` of the same file apply them alike.
``docs/privacy.md`` says what each protects against and how to choose the numbers.

- **Secure aggregation** (:mod:`lpfl.secagg`): clients mask their quantized updates so that the
  server learns only the round's sum.
- **Differential privacy** (client-level DP-FedAvg, McMahan et al. 2018): every update's change
  is L2-clipped to ``server.round.clip-norm`` and the updates are averaged with equal weights;
  Gaussian noise of standard deviation ``2 × noise_multiplier × clip_norm`` is added to their sum,
  by the server, or shared out among the clients when secure aggregation is on. ``2 × clip_norm``
  is the sum's sensitivity when one client is replaced by another (the neighbouring relation of
  sampling a fixed number of clients). :class:`Accountant` reports the ε spent for ``delta``
  after every round with Google's ``dp-accounting`` (RDP, sampling without replacement), and the
  round machine refuses to start a round that would spend more than ``epsilon_budget``.

``dp-accounting`` is an optional dependency (``pip install 'lpfl[privacy]'``); it is imported
only when differential privacy is configured.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lpfl.errors import ConfigError

MAX_SECAGG_CLIENTS = 200
"""The most clients one secure-aggregation round may sample: its key and share messages carry one
entry per participant in a JSON header of at most 64 KiB (:data:`lpfl.wire.MAX_HEADER_BYTES`)."""


@dataclass(frozen=True)
class PrivacyRules:
    """Secure aggregation and differential privacy (``[server.round.privacy]``); both off by
    default.

    ``secure_aggregation``: clients send masked, quantized updates and the server unmasks only
    their sum. A round needs ``floor(threshold × n) + 1`` (at least 2) of its ``n`` sampled
    clients to get through every step; fewer and the attempt fails and is retried.
    ``clip_range`` bounds every coordinate of an update's change from the global state before it
    is quantized, ``max_weight`` caps the example count a client weighs its update with;
    together with ``n`` they fix the fixed-point scale (:func:`lpfl.secagg.scale_bits`).
    ``phase_deadline_s`` is how long each key, share, masked-input and unmasking step waits
    (training has ``deadline_s``).

    ``noise_multiplier`` > 0 turns on client-level differential privacy: the standard deviation
    of the noise on the sum is ``2 × noise_multiplier × clip_norm``. ``delta`` is the δ for
    which ε is reported; ``epsilon_budget`` > 0 ends the run before a round would take ε past
    it. ``sampling_amplification`` accounts each round as a uniform sample of the sampled
    clients out of the connected ones (only sound if who is sampled stays secret from whoever
    sees the models); off, every round is accounted as if every client took part.
    """

    secure_aggregation: bool = False
    threshold: float = 0.5
    clip_range: float = 1.0
    max_weight: int = 1000
    phase_deadline_s: float = 30.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    epsilon_budget: float = 0.0
    sampling_amplification: bool = True

    def __post_init__(self) -> None:
        checks = (
            (0.5 <= self.threshold < 1, f"threshold={self.threshold} must be in [0.5, 1): the "
             "share of a round's sampled clients that must survive each step is above it"),
            (0 < self.clip_range < math.inf, f"clip_range={self.clip_range} must be > 0"),
            (1 <= self.max_weight <= 2**20, f"max_weight={self.max_weight} must be in "
             f"[1, {2**20}]"),
            (0 < self.phase_deadline_s < math.inf,
             f"phase_deadline_s={self.phase_deadline_s} must be > 0"),
            (0 <= self.noise_multiplier < math.inf,
             f"noise_multiplier={self.noise_multiplier} must be >= 0 (0: no differential "
             "privacy)"),
            (0 < self.delta < 1, f"delta={self.delta} must be in (0, 1)"),
            (0 <= self.epsilon_budget < math.inf,
             f"epsilon_budget={self.epsilon_budget} must be >= 0 (0: no budget)"),
            (self.epsilon_budget == 0 or self.differential,
             f"epsilon_budget={self.epsilon_budget} needs noise_multiplier > 0: without noise "
             "no ε is spent or accounted"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"server.round.privacy.{message}")

    @property
    def differential(self) -> bool:
        """Whether updates are clipped, averaged with equal weights and noised."""
        return self.noise_multiplier > 0

    @property
    def enabled(self) -> bool:
        return self.secure_aggregation or self.differential

    def threshold_for(self, sampled: int) -> int:
        """How many of ``sampled`` clients must get through each secure-aggregation step."""
        return max(2, math.floor(self.threshold * sampled) + 1)

    def sum_noise_std(self, clip_norm: float) -> float:
        """The standard deviation of the Gaussian noise on the sum of clipped updates."""
        return 2.0 * self.noise_multiplier * clip_norm


@dataclass(frozen=True)
class DpRound:
    """One round's release as the accountant sees it: ``sampled`` clients drawn out of
    ``population`` connected ones, noise of ``noise_multiplier`` (relative to the sum's
    replace-one sensitivity)."""

    noise_multiplier: float
    population: int
    sampled: int

    def to_dict(self, epsilon: float, delta: float) -> dict[str, float]:
        """The round record's ``privacy`` entry: ε spent up to and including this round."""
        return {"epsilon": epsilon, "delta": delta, "noise_multiplier": self.noise_multiplier,
                "population": float(self.population), "sampled": float(self.sampled)}

    @classmethod
    def from_dict(cls, document: Mapping[str, float]) -> DpRound:
        """Inverse of :meth:`to_dict` (ε is recomputed, not read)."""
        return cls(float(document["noise_multiplier"]), int(document["population"]),
                   int(document["sampled"]))


def _dp_accounting() -> Any:
    try:
        import dp_accounting
    except ImportError:
        raise ConfigError("differential privacy (server.round.privacy.noise-multiplier > 0) "
                          "needs the dp-accounting package: pip install 'lpfl[privacy]'"
                          ) from None
    return dp_accounting


def require_accountant() -> None:
    """Raise :class:`ConfigError` now if the accountant's library is missing."""
    _dp_accounting()


class Accountant:
    """ε spent so far, for one δ, over every round that released an aggregate.

    Rounds are composed with ``dp_accounting``'s RDP accountant under the replace-one
    neighbouring relation: a round that samples ``m`` of ``n`` clients is a
    ``SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(z))`` (with
    ``amplification``; otherwise, and whenever ``m == n``, a plain ``GaussianDpEvent(z)``).
    """

    def __init__(self, delta: float, amplification: bool = True,
                 history: Iterable[DpRound] = ()) -> None:
        self.delta = delta
        self.amplification = amplification
        self._rounds: Counter[DpRound] = Counter()
        for spent in history:
            self.spend(spent)

    def _key(self, release: DpRound) -> DpRound:
        if not self.amplification or release.sampled >= release.population:
            return DpRound(release.noise_multiplier, 1, 1)
        return release

    def spend(self, release: DpRound) -> None:
        self._rounds[self._key(release)] += 1

    @property
    def rounds(self) -> int:
        return sum(self._rounds.values())

    def epsilon(self, then: DpRound | None = None) -> float:
        """ε spent so far, or after one more round ``then``; 0 before any round."""
        rounds = self._rounds.copy()
        if then is not None:
            rounds[self._key(then)] += 1
        return _epsilon(frozenset(rounds.items()), self.delta)


@functools.lru_cache(maxsize=256)
def _epsilon(rounds: frozenset[tuple[DpRound, int]], delta: float) -> float:
    if not rounds:
        return 0.0
    dp = _dp_accounting()
    accountant = dp.rdp.RdpAccountant(neighboring_relation=dp.NeighboringRelation.REPLACE_ONE)
    for release, count in sorted(rounds, key=lambda item: repr(item[0])):
        gaussian = dp.GaussianDpEvent(release.noise_multiplier)
        if release.sampled < release.population:
            event = dp.SampledWithoutReplacementDpEvent(release.population, release.sampled,
                                                        gaussian)
        else:
            event = gaussian
        accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


def gaussian_noise(rng: np.random.Generator, size: int, std: float) -> np.ndarray:
    """``size`` draws of N(0, std²) in float64."""
    return rng.normal(0.0, std, size) if std > 0 else np.zeros(size)


def noise_rng() -> np.random.Generator:
    """A generator seeded from the operating system's entropy: the noise must never follow the
    run's seed, or whoever knows the seed could subtract it."""
    return np.random.default_rng()
