"""Pairing codes: a nameplate number and words from the PGP word list.

A code reads ``7-istanbul-revenge-...`` aloud: the nameplate (the relay
mailbox's number, which carries no secret) and N words, each one byte of
secret from the PGP word list (Juola and Zimmermann, 1995: 256 "even" words
of two syllables and 256 "odd" words of three, alternating, so a dropped or
swapped word is noticed). magic-wormhole's codes read the same way (it
starts with an odd word; so does securechan). Five words, the default, are
40 bits: a guesser who gets one try per code (docs/THREAT-MODEL.md,
"Pairing") succeeds with probability 2^-40.

The secret that goes into the PAKE is the whole normalised code, nameplate
included (docs/PROTOCOL.md, "Pairing"). This module is pure: the caller
hands in the random bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from securechan.errors import MalformedInput

__all__ = [
    "DEFAULT_WORDS",
    "MAX_NAMEPLATE",
    "MAX_WORDS",
    "MIN_WORDS",
    "PairingCode",
    "parse_code",
]

DEFAULT_WORDS: Final = 5
"""40 bits of secret, the issue's floor."""
MIN_WORDS: Final = 2
MAX_WORDS: Final = 16
MAX_NAMEPLATE: Final = 999_999
_MAX_TEXT: Final = 256

# The PGP word list, byte 0x00 first. Even positions (0, 2, ...) of a code
# take the odd list, as magic-wormhole does.
_EVEN_WORDS: Final = tuple(
    """
    aardvark absurd accrue acme adrift adult afflict ahead aimless algol allow alone
    ammo ancient apple artist assume athens atlas aztec baboon backfield backward
    banjo beaming bedlamp beehive beeswax befriend belfast berserk billiard bison
    blackjack blockade blowtorch bluebird bombast bookshelf brackish breadline
    breakup brickyard briefcase burbank button buzzard cement chairlift chatter
    checkup chisel choking chopper christmas clamshell classic classroom cleanup
    clockwork cobra commence concert cowbell crackdown cranky crowfoot crucial
    crumpled crusade cubic dashboard deadbolt deckhand dogsled dragnet drainage
    dreadful drifter dropper drumbeat drunken dupont dwelling eating edict egghead
    eightball endorse endow enlist erase escape exceed eyeglass eyetooth facial
    fallout flagpole flatfoot flytrap fracture framework freedom frighten gazelle
    geiger glitter glucose goggles goldfish gremlin guidance hamlet highchair hockey
    indoors indulge inverse involve island jawbone keyboard kickoff kiwi klaxon
    locale lockup merit minnow miser mohawk mural music necklace neptune newborn
    nightbird oakland obtuse offload optic orca payday peachy pheasant physique
    playhouse pluto preclude prefer preshrunk printer prowler pupil puppy python
    quadrant quiver quota ragtime ratchet rebirth reform regain reindeer rematch
    repay retouch revenge reward rhythm ribcage ringbolt robust rocker ruffled
    sailboat sawdust scallion scenic scorecard scotland seabird select sentence
    shadow shamrock showgirl skullcap skydive slingshot slowdown snapline snapshot
    snowcap snowslide solo southward soybean spaniel spearhead spellbind spheroid
    spigot spindle spyglass stagehand stagnate stairway standard stapler steamship
    sterling stockman stopwatch stormy sugar surmount suspense sweatband swelter
    tactics talon tapeworm tempest tiger tissue tonic topmost tracker transit trauma
    treadmill trojan trouble tumor tunnel tycoon uncut unearth unwind uproot upset
    upshot vapor village virus vulcan waffle wallet watchword wayside willow
    woodlark zulu
    """.split()  # noqa: SIM905 - a word list reads best as text
)
_ODD_WORDS: Final = tuple(
    """
    adroitness adviser aftermath aggregate alkali almighty amulet amusement antenna
    applicant apollo armistice article asteroid atlantic atmosphere autopsy babylon
    backwater barbecue belowground bifocals bodyguard bookseller borderline
    bottomless bradbury bravado brazilian breakaway burlington businessman butterfat
    camelot candidate cannonball capricorn caravan caretaker celebrate cellulose
    certify chambermaid cherokee chicago clergyman coherence combustion commando
    company component concurrent confidence conformist congregate consensus
    consulting corporate corrosion councilman crossover crucifix cumbersome customer
    dakota decadence december decimal designing detector detergent determine
    dictator dinosaur direction disable disbelief disruptive distortion document
    embezzle enchanting enrollment enterprise equation equipment escapade eskimo
    everyday examine existence exodus fascinate filament finicky forever fortitude
    frequency gadgetry galveston getaway glossary gossamer graduate gravity
    guitarist hamburger hamilton handiwork hazardous headwaters hemisphere hesitate
    hideaway holiness hurricane hydraulic impartial impetus inception indigo inertia
    infancy inferno informant insincere insurgent integrate intention inventive
    istanbul jamaica jupiter leprosy letterhead liberty maritime matchmaker maverick
    medusa megaton microscope microwave midsummer millionaire miracle misnomer
    molasses molecule montana monument mosquito narrative nebula newsletter
    norwegian october ohio onlooker opulent orlando outfielder pacific pandemic
    pandora paperweight paragon paragraph paramount passenger pedigree pegasus
    penetrate perceptive performance pharmacy phonetic photograph pioneer pocketful
    politeness positive potato processor provincial proximate puberty publisher
    pyramid quantity racketeer rebellion recipe recover repellent replica reproduce
    resistor responsive retraction retrieval retrospect revenue revival revolver
    sandalwood sardonic saturday savagery scavenger sensation sociable souvenir
    specialist speculate stethoscope stupendous supportive surrender suspicious
    sympathy tambourine telephone therapist tobacco tolerance tomorrow torpedo
    tradition travesty trombonist truncated typewriter ultimate undaunted underfoot
    unicorn unify universe unravel upcoming vacancy vagabond vertigo virginia
    visitor vocalist voyager warranty waterloo whimsical wichita wilmington wyoming
    yesteryear yucatan
    """.split()  # noqa: SIM905 - a word list reads best as text
)
_EVEN_INDEX: Final = {w: i for i, w in enumerate(_EVEN_WORDS)}
_ODD_INDEX: Final = {w: i for i, w in enumerate(_ODD_WORDS)}
_SHAPE: Final = re.compile(rf"[0-9]{{1,6}}(-[a-z]{{1,16}}){{{MIN_WORDS},{MAX_WORDS}}}")


@dataclass(frozen=True, slots=True)
class PairingCode:
    """A parsed code: the nameplate and the secret bytes its words spell."""

    nameplate: int
    secret: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.nameplate <= MAX_NAMEPLATE:
            raise ValueError("a nameplate is 1 to 999999")
        if not MIN_WORDS <= len(self.secret) <= MAX_WORDS:
            raise ValueError(f"a code has {MIN_WORDS} to {MAX_WORDS} words")

    @classmethod
    def make(cls, nameplate: int, random: bytes) -> PairingCode:
        """The code for ``nameplate`` whose words spell ``random`` (one byte a word)."""
        return cls(nameplate, bytes(random))

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(
            (_ODD_WORDS if i % 2 == 0 else _EVEN_WORDS)[b] for i, b in enumerate(self.secret)
        )

    @property
    def bits(self) -> int:
        """Bits of secret in the words (the nameplate is public)."""
        return 8 * len(self.secret)

    def text(self) -> str:
        """The code as printed and typed: ``7-word-word-...``."""
        return "-".join((str(self.nameplate), *self.words))

    def password(self) -> bytes:
        """What the PAKE takes: the normalised code, ASCII."""
        return self.text().encode("ascii")


def parse_code(text: str) -> PairingCode:
    """Parse a typed code; case, spaces and repeated or trailing hyphens are
    forgiven (a person typed it). Raises :class:`MalformedInput` naming the
    first word that is not in the list or is in the wrong list (a dropped
    or swapped word), never echoing the rest of the code."""
    if not isinstance(text, str):
        raise TypeError("a code is a str")
    if len(text) > _MAX_TEXT:
        raise MalformedInput("that is not a pairing code (too long)")
    norm = re.sub(r"[\s\-]+", "-", text.strip().lower()).strip("-")
    if not _SHAPE.fullmatch(norm):
        raise MalformedInput(
            "that is not a pairing code: expected a number and words, like 7-istanbul-revenge"
        )
    number, *words = norm.split("-")
    nameplate = int(number)
    if not 1 <= nameplate <= MAX_NAMEPLATE:
        raise MalformedInput("that is not a pairing code (bad number)")
    secret = bytearray()
    for i, word in enumerate(words):
        index = (_ODD_INDEX if i % 2 == 0 else _EVEN_INDEX).get(word)
        if index is None:
            raise MalformedInput(
                f"word {i + 1} of the code is not one the code can hold there:"
                " check the spelling and the order"
            )
        secret.append(index)
    return PairingCode(nameplate, bytes(secret))
