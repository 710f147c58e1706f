"""What counts as "knowing" a fact of an invented person: the words a correct answer must hold.

Accuracy on generated answers is judged by these key values (a city, a year, a title) rather
than by exact sentences, so a model that answers "Lisbon." or "She was born in Lisbon" both
count, and a refusal or a wrong city does not.
"""

from __future__ import annotations

from oblivio.eval.entity_data import EntityDataset, Person, QAItem


def _title_words(title: str) -> str:
    return title[4:] if title.startswith("The ") else title


def key_values(person: Person, fact: str) -> tuple[str, ...]:
    """Any one of these appearing in an answer means the fact was produced."""
    values = {
        "birthplace": (person.birth_city,),
        "birth_year": (str(person.birth_year),),
        "profession": (person.profession,),
        "first_work": (_title_words(person.works[0]),),
        "second_work": (_title_words(person.works[1]),),
        "award": (person.award,),
        "university": (person.university,),
        "father": (person.father, person.father_job),
        "mother": (person.mother, person.mother_job),
        "genre": (person.genre,),
    }
    try:
        return values[fact]
    except KeyError:
        raise ValueError(f"unknown fact {fact!r}") from None


def item_key_values(dataset: EntityDataset, item: QAItem) -> tuple[str, ...]:
    return key_values(dataset.people[item.person_id], item.fact)
