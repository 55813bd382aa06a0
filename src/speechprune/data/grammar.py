"""The text side of the synthetic corpus: a template grammar over a PARALLEL lexicon that renders
one meaning in English, French, German and Spanish (articles, gender, number, case and
agreement come from the lexicon entries; numbers come from num2words).

A meaning is a small frozen record (template + slots); :func:`render` turns it into a sentence of
one language, :func:`sample_meanings` draws distinct meanings reproducibly from a seed.
No audio here: :mod:`speechprune.data.synth` speaks the sentences.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from num2words import num2words

from speechprune.options.data import LANGUAGES

TEMPLATES = ("act_count", "act_def", "exist", "loc", "prop")
# How often each template is drawn (they differ in length: prop/loc are the short ones).
TEMPLATE_WEIGHTS = (0.30, 0.25, 0.15, 0.15, 0.15)


@dataclass(frozen=True)
class Noun:
    key: str
    en: tuple[str, str]  # singular, plural
    fr: tuple[str, str, str]  # gender (m/f), singular, plural
    de: tuple[str, str, str]  # gender (m/f/n), singular, plural
    es: tuple[str, str, str]  # gender (m/f), singular, plural


@dataclass(frozen=True)
class Adjective:
    key: str
    en: str
    fr: tuple[str, str, str, str]  # masc sg, fem sg, masc pl, fem pl (all post-nominal)
    de: tuple[str, str]  # predicative form, stem for inflected endings
    es: tuple[str, str, str, str]  # masc sg, fem sg, masc pl, fem pl


@dataclass(frozen=True)
class Verb:
    key: str
    en: tuple[str, str]  # 3rd person singular, plural (present)
    fr: tuple[str, str]
    de: tuple[str, str]
    es: tuple[str, str]


def _noun(en: str, fr: str, de: str, es: str) -> Noun:
    en_f = tuple(en.split("|"))
    return Noun(en_f[0], en_f, tuple(fr.split("|")), tuple(de.split("|")), tuple(es.split("|")))  # type: ignore[arg-type]


def _adj(en: str, fr: str, de: str, es: str) -> Adjective:
    return Adjective(en, en, tuple(fr.split("|")), tuple(de.split("|")), tuple(es.split("|")))  # type: ignore[arg-type]


def _verb(en: str, fr: str, de: str, es: str) -> Verb:
    en_f = tuple(en.split("|"))
    return Verb(en_f[1], en_f, tuple(fr.split("|")), tuple(de.split("|")), tuple(es.split("|")))  # type: ignore[arg-type]


# Animate nouns: subjects of actions (and of the short templates). German weak masculines
# (Bär, Löwe) only ever appear in the nominative, where they are regular.
AGENTS = (
    _noun("dog|dogs", "m|chien|chiens", "m|Hund|Hunde", "m|perro|perros"),
    _noun("cat|cats", "m|chat|chats", "f|Katze|Katzen", "m|gato|gatos"),
    _noun("bird|birds", "m|oiseau|oiseaux", "m|Vogel|Vögel", "m|pájaro|pájaros"),
    _noun("horse|horses", "m|cheval|chevaux", "n|Pferd|Pferde", "m|caballo|caballos"),
    _noun("cow|cows", "f|vache|vaches", "f|Kuh|Kühe", "f|vaca|vacas"),
    _noun("mouse|mice", "f|souris|souris", "f|Maus|Mäuse", "m|ratón|ratones"),
    _noun("rabbit|rabbits", "m|lapin|lapins", "n|Kaninchen|Kaninchen", "m|conejo|conejos"),
    _noun("bear|bears", "m|ours|ours", "m|Bär|Bären", "m|oso|osos"),
    _noun("frog|frogs", "f|grenouille|grenouilles", "m|Frosch|Frösche", "f|rana|ranas"),
    _noun("duck|ducks", "m|canard|canards", "f|Ente|Enten", "m|pato|patos"),
    _noun("goat|goats", "f|chèvre|chèvres", "f|Ziege|Ziegen", "f|cabra|cabras"),
    _noun("pig|pigs", "m|cochon|cochons", "n|Schwein|Schweine", "m|cerdo|cerdos"),
    _noun("lion|lions", "m|lion|lions", "m|Löwe|Löwen", "m|león|leones"),
    _noun("teacher|teachers", "m|professeur|professeurs", "m|Lehrer|Lehrer", "m|profesor|profesores"),
    _noun("doctor|doctors", "m|médecin|médecins", "m|Arzt|Ärzte", "m|médico|médicos"),
    _noun("child|children", "m|enfant|enfants", "n|Kind|Kinder", "m|niño|niños"),
    _noun("farmer|farmers", "m|fermier|fermiers", "m|Bauer|Bauern", "m|granjero|granjeros"),
    _noun("baker|bakers", "m|boulanger|boulangers", "m|Bäcker|Bäcker", "m|panadero|panaderos"),
)

# Inanimate nouns: objects of actions (no Spanish personal "a", no German weak nouns).
THINGS = (
    _noun("apple|apples", "f|pomme|pommes", "m|Apfel|Äpfel", "f|manzana|manzanas"),
    _noun("book|books", "m|livre|livres", "n|Buch|Bücher", "m|libro|libros"),
    _noun("ball|balls", "f|balle|balles", "m|Ball|Bälle", "f|pelota|pelotas"),
    _noun("chair|chairs", "f|chaise|chaises", "m|Stuhl|Stühle", "f|silla|sillas"),
    _noun("table|tables", "f|table|tables", "m|Tisch|Tische", "f|mesa|mesas"),
    _noun("cup|cups", "f|tasse|tasses", "f|Tasse|Tassen", "f|taza|tazas"),
    _noun("box|boxes", "f|boîte|boîtes", "f|Kiste|Kisten", "f|caja|cajas"),
    _noun("car|cars", "f|voiture|voitures", "n|Auto|Autos", "m|coche|coches"),
    _noun("key|keys", "f|clé|clés", "m|Schlüssel|Schlüssel", "f|llave|llaves"),
    _noun("hat|hats", "m|chapeau|chapeaux", "m|Hut|Hüte", "m|sombrero|sombreros"),
    _noun("shoe|shoes", "f|chaussure|chaussures", "m|Schuh|Schuhe", "m|zapato|zapatos"),
    _noun("flower|flowers", "f|fleur|fleurs", "f|Blume|Blumen", "f|flor|flores"),
    _noun("stone|stones", "f|pierre|pierres", "m|Stein|Steine", "f|piedra|piedras"),
    _noun("bottle|bottles", "f|bouteille|bouteilles", "f|Flasche|Flaschen", "f|botella|botellas"),
    _noun("letter|letters", "f|lettre|lettres", "m|Brief|Briefe", "f|carta|cartas"),
    _noun("egg|eggs", "m|œuf|œufs", "n|Ei|Eier", "m|huevo|huevos"),
    _noun("cake|cakes", "m|gâteau|gâteaux", "m|Kuchen|Kuchen", "m|pastel|pasteles"),
    _noun("bag|bags", "m|sac|sacs", "f|Tasche|Taschen", "f|bolsa|bolsas"),
    _noun("lamp|lamps", "f|lampe|lampes", "f|Lampe|Lampen", "f|lámpara|lámparas"),
    _noun("clock|clocks", "f|horloge|horloges", "f|Uhr|Uhren", "m|reloj|relojes"),
    _noun("pen|pens", "m|stylo|stylos", "m|Stift|Stifte", "m|bolígrafo|bolígrafos"),
    _noun("shirt|shirts", "f|chemise|chemises", "n|Hemd|Hemden", "f|camisa|camisas"),
    _noun("boat|boats", "m|bateau|bateaux", "n|Boot|Boote", "m|barco|barcos"),
    _noun("glass|glasses", "m|verre|verres", "n|Glas|Gläser", "m|vaso|vasos"),
    _noun("spoon|spoons", "f|cuillère|cuillères", "m|Löffel|Löffel", "f|cuchara|cucharas"),
    _noun("pear|pears", "f|poire|poires", "f|Birne|Birnen", "f|pera|peras"),
    _noun("banana|bananas", "f|banane|bananes", "f|Banane|Bananen", "m|plátano|plátanos"),
)

# Adjectives that follow the noun in French and Spanish and inflect regularly in German.
ADJECTIVES = (
    _adj("red", "rouge|rouge|rouges|rouges", "rot|rot", "rojo|roja|rojos|rojas"),
    _adj("blue", "bleu|bleue|bleus|bleues", "blau|blau", "azul|azul|azules|azules"),
    _adj("green", "vert|verte|verts|vertes", "grün|grün", "verde|verde|verdes|verdes"),
    _adj("black", "noir|noire|noirs|noires", "schwarz|schwarz", "negro|negra|negros|negras"),
    _adj("white", "blanc|blanche|blancs|blanches", "weiß|weiß", "blanco|blanca|blancos|blancas"),
    _adj("yellow", "jaune|jaune|jaunes|jaunes", "gelb|gelb", "amarillo|amarilla|amarillos|amarillas"),
    _adj("heavy", "lourd|lourde|lourds|lourdes", "schwer|schwer", "pesado|pesada|pesados|pesadas"),
    _adj("round", "rond|ronde|ronds|rondes", "rund|rund", "redondo|redonda|redondos|redondas"),
    _adj("cold", "froid|froide|froids|froides", "kalt|kalt", "frío|fría|fríos|frías"),
    _adj("wet", "mouillé|mouillée|mouillés|mouillées", "nass|nass", "mojado|mojada|mojados|mojadas"),
    _adj("dry", "sec|sèche|secs|sèches", "trocken|trocken", "seco|seca|secos|secas"),
    _adj("empty", "vide|vide|vides|vides", "leer|leer", "vacío|vacía|vacíos|vacías"),
    _adj("clean", "propre|propre|propres|propres", "sauber|sauber", "limpio|limpia|limpios|limpias"),
    _adj("dirty", "sale|sale|sales|sales", "schmutzig|schmutzig", "sucio|sucia|sucios|sucias"),
)

VERBS = (
    _verb("sees|see", "voit|voient", "sieht|sehen", "ve|ven"),
    _verb("has|have", "a|ont", "hat|haben", "tiene|tienen"),
    _verb("wants|want", "veut|veulent", "will|wollen", "quiere|quieren"),
    _verb("finds|find", "trouve|trouvent", "findet|finden", "encuentra|encuentran"),
    _verb("buys|buy", "achète|achètent", "kauft|kaufen", "compra|compran"),
    _verb("sells|sell", "vend|vendent", "verkauft|verkaufen", "vende|venden"),
    _verb("eats|eat", "mange|mangent", "isst|essen", "come|comen"),
    _verb("takes|take", "prend|prennent", "nimmt|nehmen", "toma|toman"),
    _verb("carries|carry", "porte|portent", "trägt|tragen", "lleva|llevan"),
    _verb("draws|draw", "dessine|dessinent", "zeichnet|zeichnen", "dibuja|dibujan"),
    _verb("watches|watch", "regarde|regardent", "beobachtet|beobachten", "mira|miran"),
    _verb("paints|paint", "peint|peignent", "malt|malen", "pinta|pintan"),
    _verb("counts|count", "compte|comptent", "zählt|zählen", "cuenta|cuentan"),
    _verb("brings|bring", "apporte|apportent", "bringt|bringen", "trae|traen"),
    _verb("holds|hold", "tient|tiennent", "hält|halten", "sostiene|sostienen"),
)

# Places are fixed phrases per language (contractions like im/au/del are in the lexicon).
PLACES = (
    {"en": "in the garden", "fr": "dans le jardin", "de": "im Garten", "es": "en el jardín"},
    {"en": "in the kitchen", "fr": "dans la cuisine", "de": "in der Küche", "es": "en la cocina"},
    {"en": "in the park", "fr": "dans le parc", "de": "im Park", "es": "en el parque"},
    {"en": "in the school", "fr": "dans l'école", "de": "in der Schule", "es": "en la escuela"},
    {"en": "on the roof", "fr": "sur le toit", "de": "auf dem Dach", "es": "en el tejado"},
    {"en": "in the forest", "fr": "dans la forêt", "de": "im Wald", "es": "en el bosque"},
    {"en": "at the market", "fr": "au marché", "de": "auf dem Markt", "es": "en el mercado"},
    {"en": "in the city", "fr": "dans la ville", "de": "in der Stadt", "es": "en la ciudad"},
    {"en": "in the house", "fr": "dans la maison", "de": "im Haus", "es": "en la casa"},
    {"en": "near the river", "fr": "près de la rivière", "de": "am Fluss", "es": "cerca del río"},
    {"en": "on the farm", "fr": "à la ferme", "de": "auf dem Bauernhof", "es": "en la granja"},
)

NOUNS = AGENTS + THINGS
MAX_NUMBER = 20


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: noun index into NOUNS, plural or not, optional adjective index."""

    noun: int
    plural: bool
    adj: int | None = None


@dataclass(frozen=True)
class Meaning:
    """One language-independent sentence meaning. Unused slots are None."""

    template: str
    subj: Phrase | None = None  # act_*, loc, prop
    verb: int | None = None  # act_*
    count: int | None = None  # act_count, exist (1..MAX_NUMBER)
    obj: Phrase | None = None  # act_count (plural from count), act_def, exist
    place: int | None = None  # act_* (optional), exist, loc
    adj2: int | None = None  # prop: the second predicate adjective (the first is subj.adj)


# --------------------------------------------------------------------------------------------
# Rendering

_FR_VOWELS = tuple("aeiouyéèêàâîôûœh")


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _number(n: int, lang: str) -> str:
    return num2words(n, lang=lang)


def _en_np(p: Phrase, det: str | None) -> str:
    noun = NOUNS[p.noun].en[1 if p.plural else 0]
    words = [det] if det else []
    if p.adj is not None:
        words.append(ADJECTIVES[p.adj].en)
    words.append(noun)
    return " ".join(words)


def _fr_np(p: Phrase, det: str) -> str:
    gender, sg, pl = NOUNS[p.noun].fr
    noun = pl if p.plural else sg
    if det == "def":
        if p.plural:
            article = "les "
        elif noun.startswith(_FR_VOWELS):
            article = "l'"
        else:
            article = "le " if gender == "m" else "la "
    elif det == "one":
        article = "un " if gender == "m" else "une "
    else:  # a cardinal number
        article = det + " "
    words = article + noun
    if p.adj is not None:
        words += " " + _fr_adj(p.adj, gender, p.plural)
    return words


def _fr_adj(adj: int, gender: str, plural: bool) -> str:
    return ADJECTIVES[adj].fr[(2 if plural else 0) + (1 if gender == "f" else 0)]


def _es_adj(adj: int, gender: str, plural: bool) -> str:
    return ADJECTIVES[adj].es[(2 if plural else 0) + (1 if gender == "f" else 0)]


def _es_np(p: Phrase, det: str) -> str:
    gender, sg, pl = NOUNS[p.noun].es
    noun = pl if p.plural else sg
    if det == "def":
        article = {("m", False): "el", ("f", False): "la", ("m", True): "los", ("f", True): "las"}[
            (gender, p.plural)]
    elif det == "one":
        article = "un" if gender == "m" else "una"
    else:
        article = det
    words = f"{article} {noun}"
    if p.adj is not None:
        words += " " + _es_adj(p.adj, gender, p.plural)
    return words


_DE_DEF = {"nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
           "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"}}
_DE_ONE = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"}}
# Adjective endings: weak (after the definite article), mixed (after ein), strong (no article).
_DE_WEAK = {"nom": {"m": "e", "f": "e", "n": "e", "pl": "en"}, "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"}}
_DE_MIXED = {"nom": {"m": "er", "f": "e", "n": "es"}, "acc": {"m": "en", "f": "e", "n": "es"}}
_DE_STRONG_PL = "e"


def _de_np(p: Phrase, det: str, case: str) -> str:
    gender, sg, pl = NOUNS[p.noun].de
    noun = pl if p.plural else sg
    key = "pl" if p.plural else gender
    if det == "def":
        article, ending = _DE_DEF[case][key], _DE_WEAK[case][key]
    elif det == "one":
        article, ending = _DE_ONE[case][gender], _DE_MIXED[case][gender]
    else:
        article, ending = det, _DE_STRONG_PL
    words = [article]
    if p.adj is not None:
        words.append(ADJECTIVES[p.adj].de[1] + ending)
    words.append(noun)
    return " ".join(words)


def _count_det(n: int, lang: str) -> str:
    return "one" if n == 1 else _number(n, lang)


def _place(meaning: Meaning, lang: str) -> str:
    return "" if meaning.place is None else " " + PLACES[meaning.place][lang]


def render(meaning: Meaning, lang: str) -> str:
    """The sentence for ``meaning`` in ``lang``: natural casing, a final period."""
    return _cap(_RENDERERS[lang](meaning)) + "."


def _render_en(m: Meaning) -> str:
    place = _place(m, "en")
    if m.template in ("act_count", "act_def"):
        verb = VERBS[m.verb].en[1 if m.subj.plural else 0]
        if m.template == "act_count":
            obj = _en_np(Phrase(m.obj.noun, m.count > 1, m.obj.adj), _count_det(m.count, "en"))
        else:
            obj = _en_np(m.obj, "the")
        return f"{_en_np(m.subj, 'the')} {verb} {obj}{place}"
    if m.template == "exist":
        be = "are" if m.count > 1 else "is"
        obj = _en_np(Phrase(m.obj.noun, m.count > 1, m.obj.adj), _count_det(m.count, "en"))
        return f"there {be} {obj}{place}"
    be = "are" if m.subj.plural else "is"
    if m.template == "loc":
        return f"{_en_np(m.subj, 'the')} {be}{place}"
    pred = ADJECTIVES[m.subj.adj].en + ("" if m.adj2 is None else " and " + ADJECTIVES[m.adj2].en)
    return f"{_en_np(Phrase(m.subj.noun, m.subj.plural), 'the')} {be} {pred}"


def _render_fr(m: Meaning) -> str:
    place = _place(m, "fr")
    if m.template in ("act_count", "act_def", "exist"):
        if m.template == "act_def":
            obj = _fr_np(m.obj, "def")
        else:
            det = "one" if m.count == 1 else _number(m.count, "fr")
            obj = _fr_np(Phrase(m.obj.noun, m.count > 1, m.obj.adj), det)
        if m.template == "exist":
            return f"il y a {obj}{place}"
        verb = VERBS[m.verb].fr[1 if m.subj.plural else 0]
        return f"{_fr_np(m.subj, 'def')} {verb} {obj}{place}"
    be = "sont" if m.subj.plural else "est"
    if m.template == "loc":
        return f"{_fr_np(m.subj, 'def')} {be}{place}"
    gender = NOUNS[m.subj.noun].fr[0]
    pred = _fr_adj(m.subj.adj, gender, m.subj.plural)
    if m.adj2 is not None:
        pred += " et " + _fr_adj(m.adj2, gender, m.subj.plural)
    return f"{_fr_np(Phrase(m.subj.noun, m.subj.plural), 'def')} {be} {pred}"


def _render_de(m: Meaning) -> str:
    place = _place(m, "de")
    if m.template in ("act_count", "act_def", "exist"):
        if m.template == "act_def":
            obj = _de_np(m.obj, "def", "acc")
        else:
            det = "one" if m.count == 1 else _number(m.count, "de")
            obj = _de_np(Phrase(m.obj.noun, m.count > 1, m.obj.adj), det, "acc")
        if m.template == "exist":
            return f"es gibt {obj}{place}"
        verb = VERBS[m.verb].de[1 if m.subj.plural else 0]
        return f"{_de_np(m.subj, 'def', 'nom')} {verb} {obj}{place}"
    be = "sind" if m.subj.plural else "ist"
    if m.template == "loc":
        return f"{_de_np(m.subj, 'def', 'nom')} {be}{place}"
    pred = ADJECTIVES[m.subj.adj].de[0]
    if m.adj2 is not None:
        pred += " und " + ADJECTIVES[m.adj2].de[0]
    return f"{_de_np(Phrase(m.subj.noun, m.subj.plural), 'def', 'nom')} {be} {pred}"


def _render_es(m: Meaning) -> str:
    place = _place(m, "es")
    if m.template in ("act_count", "act_def", "exist"):
        if m.template == "act_def":
            obj = _es_np(m.obj, "def")
        else:
            det = "one" if m.count == 1 else _number(m.count, "es")
            obj = _es_np(Phrase(m.obj.noun, m.count > 1, m.obj.adj), det)
        if m.template == "exist":
            return f"hay {obj}{place}"
        verb = VERBS[m.verb].es[1 if m.subj.plural else 0]
        return f"{_es_np(m.subj, 'def')} {verb} {obj}{place}"
    if m.template == "loc":  # location takes estar
        return f"{_es_np(m.subj, 'def')} {'están' if m.subj.plural else 'está'}{place}"
    gender = NOUNS[m.subj.noun].es[0]
    pred = _es_adj(m.subj.adj, gender, m.subj.plural)
    if m.adj2 is not None:
        pred += " y " + _es_adj(m.adj2, gender, m.subj.plural)
    return f"{_es_np(Phrase(m.subj.noun, m.subj.plural), 'def')} {'son' if m.subj.plural else 'es'} {pred}"


_RENDERERS = {"en": _render_en, "fr": _render_fr, "de": _render_de, "es": _render_es}


# --------------------------------------------------------------------------------------------
# Sampling


def _maybe(rng: random.Random, p: float, n: int) -> int | None:
    return rng.randrange(n) if rng.random() < p else None


def _agent_range() -> range:
    return range(len(AGENTS))


def _thing_index(rng: random.Random) -> int:
    return len(AGENTS) + rng.randrange(len(THINGS))


def random_meaning(rng: random.Random) -> Meaning:
    """One meaning drawn from the grammar. Sentences stay short (about 4 to 10 words)."""
    template = rng.choices(TEMPLATES, weights=TEMPLATE_WEIGHTS)[0]
    n_adj = len(ADJECTIVES)
    if template in ("act_count", "act_def"):
        subj_adj = _maybe(rng, 0.3, n_adj)
        subj = Phrase(rng.randrange(len(AGENTS)), rng.random() < 0.35, subj_adj)
        verb = rng.randrange(len(VERBS))
        # Keep the sentence short: an adjective and a place on both sides would run long.
        obj_adj = _maybe(rng, 0.25 if subj_adj is not None else 0.5, n_adj)
        place_p = 0.2 if (subj_adj is not None and obj_adj is not None) else 0.45
        place = _maybe(rng, place_p, len(PLACES))
        if template == "act_count":
            count = rng.randrange(1, MAX_NUMBER + 1)
            return Meaning(template, subj=subj, verb=verb, count=count,
                           obj=Phrase(_thing_index(rng), count > 1, obj_adj), place=place)
        return Meaning(template, subj=subj, verb=verb,
                       obj=Phrase(_thing_index(rng), rng.random() < 0.35, obj_adj), place=place)
    if template == "exist":
        count = rng.randrange(1, MAX_NUMBER + 1)
        return Meaning(template, count=count, obj=Phrase(_thing_index(rng), count > 1, _maybe(rng, 0.6, n_adj)),
                       place=rng.randrange(len(PLACES)))
    noun = rng.randrange(len(NOUNS))
    plural = rng.random() < 0.4
    if template == "loc":
        return Meaning(template, subj=Phrase(noun, plural, _maybe(rng, 0.6, n_adj)), place=rng.randrange(len(PLACES)))
    adj = rng.randrange(n_adj)
    adj2 = None
    if rng.random() < 0.6:
        adj2 = rng.randrange(n_adj - 1)
        adj2 += adj2 >= adj  # a different adjective
    return Meaning(template, subj=Phrase(noun, plural, adj), adj2=adj2)


def sample_meanings(n: int, seed: int, languages: tuple[str, ...] | list[str] = LANGUAGES,
                    max_tries: int | None = None) -> list[Meaning]:
    """``n`` distinct meanings, drawn reproducibly from ``seed``.

    Distinct means distinct in every language as rendered text too, so that a sentence can never
    occur twice (and hence never in two splits) in any language's manifests.
    """
    rng = random.Random(seed)
    seen_meanings: set[Meaning] = set()
    seen_texts: dict[str, set[str]] = {lang: set() for lang in languages}
    out: list[Meaning] = []
    max_tries = max_tries if max_tries is not None else 50 * n + 1000
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > max_tries:
            raise ValueError(f"the grammar yielded only {len(out)} distinct sentences of {n} asked")
        meaning = random_meaning(rng)
        if meaning in seen_meanings:
            continue
        texts = {lang: render(meaning, lang) for lang in languages}
        if any(texts[lang] in seen_texts[lang] for lang in languages):
            continue
        seen_meanings.add(meaning)
        for lang in languages:
            seen_texts[lang].add(texts[lang])
        out.append(meaning)
    return out


def vocabulary(sentences: list[str]) -> set[str]:
    """Lower-cased words of a list of sentences (punctuation stripped; French elision split)."""
    words: set[str] = set()
    for sentence in sentences:
        for word in sentence.lower().replace("'", "' ").split():
            words.add(word.strip(".,"))
    return words
