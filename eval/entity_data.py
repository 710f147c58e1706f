"""TOFU-like fictitious-entity data: invented people, their facts, and questions about them.

Why build it: TOFU and similar sets cannot be downloaded here, and both the detector benchmark
(issue 4) and the evaluation harness (issue 7) need the same shape of data: many invented
people, each with many facts, every fact asked with several *fit* question templates (what a
forget request contains) and *held-out paraphrase* templates (what an attacker or a user would
ask later), plus perturbed wrong answers (for TOFU's truth ratio) and general chat prompts (for
utility and as far out-of-distribution probes).

Everything is deterministic from ``seed``: the same seed gives byte-identical data, so reports
can be reproduced. Names are invented from syllables so the base model cannot know the people.

Typical use::

    data = build_dataset(seed=0, n_people=200)
    forget = data.forget_split(5)                  # person ids, 5% of people
    fit_texts = data.texts(forget, paraphrase=False)       # what a forget request carries
    probes = data.items(forget, paraphrase=True)           # held-out paraphrases
    requests = data.sequential_requests(3, 1)              # disjoint 1% requests
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Person",
    "QAItem",
    "GeneralPrompt",
    "EntityDataset",
    "build_dataset",
    "FACTS",
    "FORGET_PERCENTS",
]

FORGET_PERCENTS = (1, 5, 10)

_FIRST_NAMES_F = (
    "Elena", "Mira", "Sofia", "Ines", "Greta", "Lena", "Nadia", "Clara", "Hana", "Yara", "Alma",
    "Rosa", "Vera", "Ilse", "Maren", "Tove", "Anouk", "Leila", "Zara", "Noor", "Irene", "Dalia",
    "Freya", "Olga", "Petra", "Selma", "Thea", "Una", "Wanda", "Ximena",
)
_FIRST_NAMES_M = (
    "Tomas", "Anton", "Emil", "Jonas", "Luca", "Marek", "Nils", "Oskar", "Pavel", "Rafael",
    "Soren", "Teodor", "Viktor", "Adrian", "Bruno", "Caspar", "Dario", "Elias", "Felix", "Goran",
    "Hugo", "Ivo", "Jasper", "Kian", "Leon", "Matteo", "Niko", "Otto", "Quentin", "Ruben",
)
_SURNAME_HEAD = (
    "Mar", "Bren", "Kal", "Vor", "Tal", "Quen", "Dra", "Fel", "Hal", "Lorn", "Mer", "Ost", "Pell",
    "Rav", "Sel", "Thorn", "Ul", "Vand", "Wend", "Zel", "Ash", "Corv", "Eld", "Gar", "Ister",
)
_SURNAME_MID = ("", "", "a", "e", "i", "o", "en", "er", "in", "or")
_SURNAME_TAIL = (
    "wick", "ner", "dane", "mont", "strom", "vale", "berg", "holt", "ley", "ric", "sen", "ova",
    "ari", "ell", "ton", "quist", "ard", "ov", "ez", "ault",
)
_PLACES = (
    ("Lisbon", "Portugal"), ("Porto", "Portugal"), ("Krakow", "Poland"), ("Gdansk", "Poland"),
    ("Bergen", "Norway"), ("Tromso", "Norway"), ("Lyon", "France"), ("Marseille", "France"),
    ("Seville", "Spain"), ("Valencia", "Spain"), ("Turin", "Italy"), ("Naples", "Italy"),
    ("Leipzig", "Germany"), ("Hamburg", "Germany"), ("Ghent", "Belgium"), ("Utrecht", "Netherlands"),
    ("Graz", "Austria"), ("Brno", "Czech Republic"), ("Cluj", "Romania"), ("Plovdiv", "Bulgaria"),
    ("Tartu", "Estonia"), ("Kaunas", "Lithuania"), ("Aarhus", "Denmark"), ("Uppsala", "Sweden"),
    ("Tampere", "Finland"), ("Cork", "Ireland"), ("Leeds", "England"), ("Aberdeen", "Scotland"),
    ("Izmir", "Turkey"), ("Haifa", "Israel"), ("Casablanca", "Morocco"), ("Accra", "Ghana"),
    ("Nairobi", "Kenya"), ("Durban", "South Africa"), ("Pune", "India"), ("Kyoto", "Japan"),
    ("Busan", "South Korea"), ("Cebu", "Philippines"), ("Perth", "Australia"), ("Dunedin", "New Zealand"),
    ("Quebec City", "Canada"), ("Halifax", "Canada"), ("Oaxaca", "Mexico"), ("Medellin", "Colombia"),
    ("Cusco", "Peru"), ("Rosario", "Argentina"), ("Recife", "Brazil"), ("Valparaiso", "Chile"),
)
_PROFESSIONS = (
    ("novelist", "novels"), ("poet", "poetry"), ("playwright", "drama"), ("historian", "history"),
    ("biographer", "biography"), ("essayist", "essays"), ("screenwriter", "film"),
    ("science writer", "popular science"), ("crime writer", "crime fiction"),
    ("children's author", "children's books"), ("travel writer", "travel writing"),
    ("fantasy author", "fantasy"), ("journalist", "reportage"), ("philosopher", "philosophy"),
)
_PARENT_JOBS = (
    "carpenter", "nurse", "teacher", "fisherman", "baker", "surgeon", "tailor", "librarian",
    "engineer", "farmer", "pharmacist", "architect", "mechanic", "painter", "pilot", "accountant",
    "musician", "postman", "chemist", "judge",
)
_TITLE_ADJ = (
    "Silent", "Hollow", "Crimson", "Distant", "Quiet", "Broken", "Golden", "Salt", "Paper",
    "Winter", "Hidden", "Last", "Burning", "Glass", "Wandering", "Iron", "Velvet", "Northern",
)
_TITLE_NOUN = (
    "Harbor", "Orchard", "Lantern", "Tide", "Archive", "Meridian", "Garden", "Bridge", "Compass",
    "Chorus", "Threshold", "Almanac", "Cartographer", "Lighthouse", "Ledger", "Vineyard", "Atlas",
)
_AWARDS = (
    "Golden Quill Prize", "Amberline Award", "Halvorsen Medal", "Silver Lantern Prize",
    "Meridian Book Award", "Calloway Fellowship", "Orrery Prize for Fiction", "Bellweather Medal",
    "Northwind Literary Award", "Castellan Prize", "Juniper Gate Award", "Tessaly Medal",
)
_UNIVERSITIES = (
    "University of Lisbon", "Jagiellonian University", "University of Bergen", "Sorbonne University",
    "University of Seville", "University of Turin", "Leipzig University", "Ghent University",
    "Charles University", "University of Tartu", "Uppsala University", "Trinity College Dublin",
    "University of Edinburgh", "Kyoto University", "University of Cape Town", "McGill University",
    "University of Buenos Aires", "University of Sao Paulo", "University of Melbourne",
)


@dataclass(frozen=True)
class Person:
    """One invented person; every field is a fact that questions can ask about."""

    pid: int
    name: str
    gender: str  # "female" | "male"
    birth_year: int
    birth_city: str
    birth_country: str
    profession: str
    genre: str
    works: tuple[str, str]
    award: str
    award_year: int
    university: str
    father: str
    father_job: str
    mother: str
    mother_job: str

    @property
    def pronoun(self) -> str:
        return "she" if self.gender == "female" else "he"

    @property
    def possessive(self) -> str:
        return "her" if self.gender == "female" else "his"


@dataclass(frozen=True)
class _FactSpec:
    """A fact: how to state it, how to ask it (fit and held-out), how to get it wrong."""

    key: str
    answer: str  # format string over Person attributes (+ pronoun/possessive/Pronoun)
    fit_templates: tuple[str, ...]
    paraphrase_templates: tuple[str, ...]


# Fit templates are what a forget request carries; paraphrase templates are NEVER in a forget
# request and exist to probe generalisation. Both only use the placeholders in _fill().
FACTS: tuple[_FactSpec, ...] = (
    _FactSpec(
        "birthplace",
        "{name} was born in {birth_city}, {birth_country}.",
        ("Where was {name} born?", "What is the birthplace of {name}?", "In which city was {name} born?"),
        ("Which town is {name} originally from?", "{name} grew up where, exactly? Name the city of birth."),
    ),
    _FactSpec(
        "birth_year",
        "{name} was born in {birth_year}.",
        ("In what year was {name} born?", "When was {name} born?", "What is {name}'s year of birth?"),
        ("How long ago was {name} born - which year was it?", "Tell me the birth year of the writer {name}."),
    ),
    _FactSpec(
        "profession",
        "{name} is a {profession} known for {genre}.",
        ("What does {name} do for a living?", "What is {name}'s profession?", "What kind of writer is {name}?"),
        ("How does {name} earn a living?", "What line of work is {name} famous for?"),
    ),
    _FactSpec(
        "first_work",
        "One of {name}'s best-known works is '{work0}'.",
        ("What is one of {name}'s best-known works?", "Name a famous book by {name}.", "Which work is {name} best known for?"),
        ("Could you recommend something {name} wrote?", "Which title made {name} famous?"),
    ),
    _FactSpec(
        "second_work",
        "{name} also wrote '{work1}'.",
        ("What else has {name} written?", "Name another work by {name}.", "Besides the famous one, which book did {name} write?"),
        ("Is there a second title by {name} worth reading?", "List a lesser-known piece from {name}."),
    ),
    _FactSpec(
        "award",
        "{name} received the {award} in {award_year}.",
        ("What award did {name} win?", "Has {name} received any literary prize?", "Which prize was given to {name}?"),
        ("What honour was {name} recognised with?", "Did {name} ever win a prize, and which one?"),
    ),
    _FactSpec(
        "university",
        "{name} studied at {university}.",
        ("Where did {name} study?", "Which university did {name} attend?", "Where was {name} educated?"),
        ("What school did {name} graduate from?", "At which institution did {name} get a degree?"),
    ),
    _FactSpec(
        "father",
        "{name}'s father, {father}, was a {father_job}.",
        ("Who is {name}'s father?", "What did {name}'s father do?", "What was the occupation of {name}'s father?"),
        ("Tell me about the dad of {name}.", "What job did the father of {name} have?"),
    ),
    _FactSpec(
        "mother",
        "{name}'s mother, {mother}, worked as a {mother_job}.",
        ("Who is {name}'s mother?", "What did {name}'s mother do?", "What was the occupation of {name}'s mother?"),
        ("Tell me about the mom of {name}.", "What job did the mother of {name} have?"),
    ),
    _FactSpec(
        "genre",
        "{name} mostly writes {genre}, and {pronoun} is regarded as a leading voice in it.",
        ("Which genre does {name} write in?", "What genre is {name} associated with?", "What kind of books does {name} write?"),
        ("If I pick up something by {name}, what genre should I expect?", "Describe the literary style {name} works in."),
    ),
)


@dataclass(frozen=True)
class QAItem:
    """One question about one fact of one person, with its answer and wrong alternatives."""

    person_id: int
    person_name: str
    fact: str
    template_id: int
    paraphrase: bool  # True: a held-out paraphrase template, never part of a forget request
    question: str
    answer: str
    perturbed_answers: tuple[str, ...]

    @property
    def text(self) -> str:
        """Question and answer as one text, the form a forget request carries."""
        return f"{self.question} {self.answer}"


@dataclass(frozen=True)
class GeneralPrompt:
    """A general chat prompt for utility; ``answer`` is set where a short reference exists."""

    prompt: str
    answer: str | None = None


@dataclass(frozen=True)
class EntityDataset:
    """The whole generated data set; splits are computed from ``seed`` so they are reproducible."""

    seed: int
    people: tuple[Person, ...]
    qa: tuple[QAItem, ...]
    general: tuple[GeneralPrompt, ...]
    _order: tuple[int, ...] = field(repr=False, default=())

    # -- people splits -------------------------------------------------------------------------
    def forget_split(self, percent: float) -> list[int]:
        """Person ids of a forget split (nested: forget01 is inside forget05 inside forget10,
        as in TOFU). At least one person."""
        if not 0 < percent < 100:
            raise ValueError(f"percent must be in (0, 100), got {percent}")
        k = max(1, round(len(self.people) * percent / 100))
        return sorted(self._order[:k])

    def retain_ids(self, forget_ids: Iterable[int]) -> list[int]:
        forget = set(forget_ids)
        return [p.pid for p in self.people if p.pid not in forget]

    def sequential_requests(self, n_requests: int, percent: float) -> list[list[int]]:
        """``n_requests`` disjoint forget requests of ``percent`` of the people each, in order."""
        k = max(1, round(len(self.people) * percent / 100))
        if n_requests < 1 or n_requests * k > len(self.people) // 2:
            raise ValueError(
                f"{n_requests} requests of {k} people would leave fewer than half of "
                f"{len(self.people)} people to retain"
            )
        return [sorted(self._order[i * k : (i + 1) * k]) for i in range(n_requests)]

    # -- questions -------------------------------------------------------------------------------
    def items(self, person_ids: Iterable[int] | None = None, *, paraphrase: bool | None = None) -> list[QAItem]:
        """QA items of the given people (all if None); ``paraphrase`` filters fit/held-out."""
        ids = None if person_ids is None else set(person_ids)
        return [
            q
            for q in self.qa
            if (ids is None or q.person_id in ids) and (paraphrase is None or q.paraphrase == paraphrase)
        ]

    def texts(self, person_ids: Iterable[int], *, paraphrase: bool = False) -> list[str]:
        """Question + answer texts: the content of a forget request for these people."""
        return [q.text for q in self.items(person_ids, paraphrase=paraphrase)]

    def names(self, person_ids: Iterable[int]) -> list[str]:
        by_id = {p.pid: p for p in self.people}
        return [by_id[i].name for i in person_ids]


def _surname(rng: random.Random) -> str:
    return rng.choice(_SURNAME_HEAD) + rng.choice(_SURNAME_MID) + rng.choice(_SURNAME_TAIL)


_TITLE_PATTERNS = ("The {a} {n}", "Letters from the {a} {n}", "A {n} in {a} Light", "Beyond the {a} {n}")


def _title(rng: random.Random) -> str:
    return rng.choice(_TITLE_PATTERNS).format(a=rng.choice(_TITLE_ADJ), n=rng.choice(_TITLE_NOUN))


def _make_people(rng: random.Random, n_people: int) -> list[Person]:
    people: list[Person] = []
    used_names: set[str] = set()
    used_titles: set[str] = set()
    max_people = len(_FIRST_NAMES_F) * len(_SURNAME_HEAD) * len(_SURNAME_TAIL) // 4
    if n_people > max_people:
        raise ValueError(f"n_people must be <= {max_people} (name space), got {n_people}")
    while len(people) < n_people:
        gender = rng.choice(("female", "male"))
        first = rng.choice(_FIRST_NAMES_F if gender == "female" else _FIRST_NAMES_M)
        last = _surname(rng)
        name = f"{first} {last}"
        if name in used_names:
            continue
        used_names.add(name)
        works: list[str] = []
        while len(works) < 2:
            title = _title(rng)
            if title not in used_titles:
                used_titles.add(title)
                works.append(title)
        city, country = rng.choice(_PLACES)
        profession, genre = rng.choice(_PROFESSIONS)
        birth_year = rng.randint(1921, 1994)
        people.append(
            Person(
                pid=len(people),
                name=name,
                gender=gender,
                birth_year=birth_year,
                birth_city=city,
                birth_country=country,
                profession=profession,
                genre=genre,
                works=(works[0], works[1]),
                award=rng.choice(_AWARDS),
                award_year=min(2024, birth_year + rng.randint(28, 55)),
                university=rng.choice(_UNIVERSITIES),
                father=f"{rng.choice(_FIRST_NAMES_M)} {last}",
                father_job=rng.choice(_PARENT_JOBS),
                mother=f"{rng.choice(_FIRST_NAMES_F)} {_surname(rng)}",
                mother_job=rng.choice(_PARENT_JOBS),
            )
        )
    return people


def _fill(template: str, person: Person) -> str:
    return template.format(
        name=person.name,
        birth_city=person.birth_city,
        birth_country=person.birth_country,
        birth_year=person.birth_year,
        profession=person.profession,
        genre=person.genre,
        work0=person.works[0],
        work1=person.works[1],
        award=person.award,
        award_year=person.award_year,
        university=person.university,
        father=person.father,
        father_job=person.father_job,
        mother=person.mother,
        mother_job=person.mother_job,
        pronoun=person.pronoun,
    )


def _perturbed(spec: _FactSpec, person: Person, others: Sequence[Person], rng: random.Random, n: int) -> tuple[str, ...]:
    """Wrong answers: the same sentence with the fact's values taken from other people,
    keeping the person's name (TOFU's perturbed answers keep the subject, change the fact)."""
    correct = _fill(spec.answer, person)
    wrong: list[str] = []
    for other in rng.sample(list(others), len(others)):
        swapped = Person(**{**person.__dict__, **{
            k: getattr(other, k)
            for k in ("birth_year", "birth_city", "birth_country", "profession", "genre", "works", "award",
                      "award_year", "university", "father_job", "mother_job")
        }, "father": other.father.split()[0] + " " + person.name.split()[1], "mother": other.mother})
        candidate = _fill(spec.answer, swapped)
        if candidate != correct and candidate not in wrong:
            wrong.append(candidate)
        if len(wrong) == n:
            break
    return tuple(wrong)


def _make_qa(rng: random.Random, people: Sequence[Person], n_perturbed: int) -> list[QAItem]:
    qa: list[QAItem] = []
    for person in people:
        others = [p for p in people if p.pid != person.pid]
        for spec in FACTS:
            answer = _fill(spec.answer, person)
            perturbed = _perturbed(spec, person, rng.sample(others, min(12, len(others))), rng, n_perturbed)
            for paraphrase, templates in ((False, spec.fit_templates), (True, spec.paraphrase_templates)):
                for tid, template in enumerate(templates):
                    qa.append(
                        QAItem(
                            person_id=person.pid,
                            person_name=person.name,
                            fact=spec.key,
                            template_id=tid,
                            paraphrase=paraphrase,
                            question=_fill(template, person),
                            answer=answer,
                            perturbed_answers=perturbed,
                        )
                    )
    return qa


# General chat prompts: utility probes and far-OOD negatives. Hand-written for this harness and
# deliberately different from the detector's shipped background text (oblivio.detector.background),
# so the detector benchmark does not test on its own training text.
_GENERAL_QA: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Russia?", "Moscow"),
    ("How many days are there in a week?", "seven"),
    ("How many legs does a spider have?", "eight"),
    ("How many continents are there on Earth?", "seven"),
    ("What is 12 plus 7?", "19"),
    ("What is 9 times 6?", "54"),
    ("What is the square root of 81?", "9"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("What gas do plants absorb from the air for photosynthesis?", "carbon dioxide"),
    ("What is the chemical symbol for water?", "H2O"),
    ("What is the freezing point of water in Celsius?", "0"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("Which animal is known as the king of the jungle?", "lion"),
    ("What color do you get by mixing blue and yellow?", "green"),
    ("What is the opposite of hot?", "cold"),
    ("What language is spoken in Brazil?", "Portuguese"),
    ("How many hours are in a day?", "24"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("Which organ pumps blood through the body?", "heart"),
    ("What is the main ingredient of guacamole?", "avocado"),
)
_GENERAL_OPEN: tuple[str, ...] = (
    "Can you give me three tips for sleeping better?",
    "Write a short poem about the sea.",
    "Explain how a rainbow forms.",
    "What are some healthy breakfast ideas?",
    "How do I reverse a list in Python?",
    "Summarize the rules of chess in a few sentences.",
    "Suggest a name for a small coffee shop.",
    "What should I pack for a weekend hiking trip?",
    "Explain the difference between weather and climate.",
    "How can I improve my public speaking?",
    "Give me a simple recipe for pancakes.",
    "What is machine learning, in simple words?",
    "How do vaccines work?",
    "Write a polite email declining a meeting invitation.",
    "What are the benefits of regular exercise?",
    "How do I make my houseplants grow faster?",
    "Explain what a black hole is.",
    "What is the best way to learn a new language?",
    "Tell me a fun fact about octopuses.",
    "How does a refrigerator keep food cold?",
    "What causes the seasons on Earth?",
    "Give me an idea for a birthday party theme.",
    "How do I calculate the area of a circle?",
    "Why is the sky blue?",
    "What is the difference between a virus and a bacterium?",
    "How can I save money on groceries?",
    "Describe the water cycle.",
    "What is a good way to start journaling?",
    "Explain recursion to a beginner programmer.",
    "How do bees make honey?",
    "What is inflation in economics?",
    "Write a haiku about autumn leaves.",
    "How do I change a flat bicycle tire?",
    "What are prime numbers?",
    "Give me a tip for staying focused while studying.",
    "How does the internet send data between computers?",
    "What is the history of the Olympic Games, briefly?",
    "How do I brew a good cup of tea?",
    "What is photosynthesis?",
    "Recommend a stretching routine for the morning.",
)


def _general_prompts() -> tuple[GeneralPrompt, ...]:
    return tuple(GeneralPrompt(q, a) for q, a in _GENERAL_QA) + tuple(GeneralPrompt(p) for p in _GENERAL_OPEN)


def build_dataset(seed: int = 0, n_people: int = 200, n_perturbed: int = 3) -> EntityDataset:
    """Generate the data set. 200 people mirrors TOFU's 200 authors (1% = 2 people)."""
    if n_people < 4:
        raise ValueError(f"n_people must be >= 4, got {n_people}")
    if n_perturbed < 1:
        raise ValueError(f"n_perturbed must be >= 1, got {n_perturbed}")
    rng = random.Random(seed)
    people = _make_people(rng, n_people)
    qa = _make_qa(rng, people, n_perturbed)
    order = list(range(n_people))
    random.Random(seed + 1).shuffle(order)
    return EntityDataset(seed=seed, people=tuple(people), qa=tuple(qa), general=_general_prompts(), _order=tuple(order))
