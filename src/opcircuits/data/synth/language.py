"""The language of the synthetic problems: names, objects, verbs, phrasings per operation and
the frames, and which frames are held out (test split only)."""

from __future__ import annotations

# A frame is held out (test split only) when its id ≡ 4 (mod 5): 8 of the 40 frames.
HELDOUT_MOD = 5

# --- the language ---------------------------------------------------------------------------
# Placeholders: {Name}, {he}/{him}/{his} (the name's pronouns), {obj} (a plural noun), {a} (the
# start number), {b} (a step's operand), {add}/{sub} (a verb of gaining/losing).

NAMES: tuple[tuple[str, str], ...] = (
    ("Mia", "f"), ("Noah", "m"), ("Ava", "f"), ("Liam", "m"), ("Zoe", "f"), ("Omar", "m"),
    ("Lena", "f"), ("Ravi", "m"), ("Sofia", "f"), ("Ethan", "m"), ("Hana", "f"), ("Leo", "m"),
    ("Nora", "f"), ("Kai", "m"), ("Ines", "f"), ("Jonas", "m"), ("Maya", "f"), ("Diego", "m"),
    ("Chloe", "f"), ("Tariq", "m"), ("Emma", "f"), ("Felix", "m"), ("Aisha", "f"), ("Sam", "m"),
    ("Julia", "f"), ("Marco", "m"), ("Priya", "f"), ("Ben", "m"), ("Yuki", "f"), ("Hugo", "m"),
)  # fmt: skip
PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}
OBJECTS: tuple[str, ...] = (
    "apples", "marbles", "stickers", "pencils", "coins", "cards", "books", "shells", "stamps",
    "cookies", "beads", "buttons", "candles", "crayons", "eggs", "flowers", "balloons", "rocks",
    "toy cars", "ribbons", "lemons", "plums", "nuts", "keys", "bottles", "cups", "tickets",
    "photos", "leaves", "bricks",
)  # fmt: skip
ADD_VERBS: tuple[str, ...] = ("gets", "finds", "buys", "receives", "wins", "collects")
SUB_VERBS: tuple[str, ...] = ("gives away", "loses", "sells", "donates", "trades away", "uses")
CONNECTORS: tuple[str, ...] = ("Then", "After that", "Next", "Later", "Then", "After a while")

# Several phrasings per operation; "each", "total", "them", "friends", "as many", "one" cross
# operations on purpose.
PHRASES: dict[str, tuple[str, ...]] = {
    "+": (
        "{he} {add} {b} more {obj}.",
        "a friend gives {him} {b} more {obj}.",
        "the total goes up by {b}.",
        "{b} friends each give {him} one more.",
        "{he} {add} one more, {b} times in a row.",
        "{he} has {b} more of them than before.",
    ),
    "-": (
        "{he} {sub} {b} {obj}.",
        "a friend takes {b} of {his} {obj}.",
        "the total goes down by {b}.",
        "{b} friends each take one from {him}.",
        "{he} {sub} one, {b} times in a row.",
        "{he} keeps all but {b} of them.",
    ),
    "*": (
        "{he} ends up with {b} times as many {obj}.",
        "a friend makes the total {b} times as large.",
        "each of {his} {obj} is swapped for {b} new ones.",
        "{his} friends give {him} {b} for each one {he} has, and {he} keeps only those.",
        "{he} has {b} times as many of them as before.",
        "the number of {obj} is multiplied by {b}.",
    ),
    "/": (
        "{he} shares the {obj} equally among {b} friends and keeps one share.",
        "a friend takes all but one of {b} equal parts of the total.",
        "{he} splits them into {b} equal groups and keeps one group.",
        "{he} keeps one out of each {b} {obj}.",
        "{his} {obj} are put into {b} equal bags and {he} keeps one bag.",
        "the number of {obj} is divided by {b}.",
    ),
}

# Frames: (setting sentence or "", opening with the start number, question sentence).
FRAMES: tuple[tuple[str, str, str], ...] = (
    ("", "{Name} has {a} {obj}.", "How many {obj} does {Name} have now?"),
    ("{Name} is getting ready for the school fair.", "{he} starts with {a} {obj}.",
     "How many {obj} does {Name} have in the end?"),
    ("", "At first, {Name} owns {a} {obj}.", "How many {obj} does {he} end up with?"),
    ("{Name} likes to count things.", "{he} collected {a} {obj} last week.",
     "What is the number of {obj} {Name} has at the end?"),
    ("", "In {his} room, {Name} keeps {a} {obj}.", "How many {obj} are in {his} room now?"),
    ("It is a rainy Saturday.", "{Name} opens a box with {a} {obj} in it.",
     "How many {obj} does {Name} have after all of this?"),
    ("", "{Name} is saving {obj} and has {a} so far.", "How many {obj} has {Name} saved now?"),
    ("{Name} sits at {his} desk.", "There are {a} {obj} on the desk.",
     "How many {obj} are on the desk now?"),
    ("", "{Name} brought {a} {obj} to school.", "How many {obj} does {Name} have at the end?"),
    ("{Name} goes to the market with {his} family.", "{his} bag holds {a} {obj}.",
     "How many {obj} are in the bag in the end?"),
    ("", "{Name} counts {a} {obj} in a jar.", "How many {obj} are in the jar now?"),
    ("A new week begins.", "{Name} has a total of {a} {obj}.",
     "What is {Name}'s total number of {obj} now?"),
    ("", "On Monday, {Name} has {a} {obj}.", "How many {obj} does {Name} have by Friday?"),
    ("{Name} helps at the class party.", "{he} is in charge of {a} {obj}.",
     "How many {obj} is {he} in charge of at the end?"),
    ("", "{Name}'s collection has {a} {obj}.", "How many {obj} are in the collection now?"),
    ("{Name} and {his} friends meet in the park.", "{Name} has {a} {obj} with {him}.",
     "How many {obj} does {Name} have with {him} now?"),
    ("", "There are {a} {obj} in {Name}'s basket.", "How many {obj} are in the basket now?"),
    ("{Name} is cleaning the garage.", "{he} finds a shelf with {a} {obj}.",
     "How many {obj} are on the shelf in the end?"),
    ("", "{Name} keeps {a} {obj} in a drawer.", "How many {obj} are in the drawer at the end?"),
    ("It is {Name}'s birthday.", "{he} has {a} {obj} to begin with.",
     "How many {obj} does {he} have when the day is over?"),
    ("", "{Name} starts the game with {a} {obj}.", "How many {obj} does {Name} finish with?"),
    ("{Name} runs a small stand.", "The stand has {a} {obj} in the morning.",
     "How many {obj} does the stand have in the evening?"),
    ("", "A box on {Name}'s table holds {a} {obj}.", "How many {obj} does the box hold now?"),
    ("{Name} is on a trip.", "{he} packed {a} {obj}.",
     "How many {obj} does {Name} have on the way home?"),
    ("", "{Name} owns exactly {a} {obj}.", "Exactly how many {obj} does {Name} own now?"),
    ("{Name} plays a trading game with friends.", "{he} begins with {a} {obj}.",
     "How many {obj} does {he} have when the game ends?"),
    ("", "{Name} has a pile of {a} {obj}.", "How many {obj} are in the pile now?"),
    ("{Name} tidies {his} shelf.", "{he} sees {a} {obj} there.",
     "How many {obj} are there on the shelf after that?"),
    ("", "{Name} is given {a} {obj} as a gift.", "How many {obj} does {Name} have in total now?"),
    ("The school year starts.", "{Name} has {a} {obj} in {his} locker.",
     "How many {obj} are in {his} locker at the end?"),
    ("", "{Name} has {a} {obj} in a bowl.", "How many {obj} are in the bowl now?"),
    ("{Name} visits {his} grandparents.", "{he} arrives with {a} {obj}.",
     "How many {obj} does {he} leave with?"),
    ("", "{Name} sorted {a} {obj} yesterday.", "How many {obj} does {Name} have sorted now?"),
    ("{Name} makes a list.", "The list says {Name} has {a} {obj}.",
     "How many {obj} should the list say now?"),
    ("", "{Name}'s team has {a} {obj}.", "How many {obj} does the team have in the end?"),
    ("{Name} works in the school library.", "{he} looks after {a} {obj}.",
     "How many {obj} does {he} look after now?"),
    ("", "{Name} lines up {a} {obj} on the floor.", "How many {obj} are on the floor now?"),
    ("Winter is coming.", "{Name} has stored {a} {obj}.",
     "How many {obj} has {Name} stored when winter comes?"),
    ("", "{Name} carries {a} {obj} in a sack.", "How many {obj} are in the sack at the end?"),
    ("{Name} writes down every change.", "{his} notebook starts at {a} {obj}.",
     "What number of {obj} does the notebook show at the end?"),
)  # fmt: skip


def heldout_frame(frame_id: int) -> bool:
    """Frames only the test split uses."""
    return frame_id % HELDOUT_MOD == HELDOUT_MOD - 1
