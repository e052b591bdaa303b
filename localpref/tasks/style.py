"""A house style: British spelling, where SmolLM2-135M-Instruct writes American ("colour", not "color").

Prompt: a short writing task on a topic that calls for a lexicon word ("Write two sentences about
the colors of autumn leaves."). The prompt spells that word the American way, as a request from
anyone might: the answer keeps the house style whatever the prompt's spelling. SmolLM2 answers in
American spelling, copying the prompt's word and adding others ("...vibrant colors... behavior...").
With the cue in British spelling it still did on about half of the held-out prompts (greedy, 64
tokens), and told "Use British spelling." it mostly complied, so the prompts say neither: the house
style is a habit a person steers away from, not an instruction the model ignores.

Units are words with the non-letters before them: ``"The"``, ``" colors"``, ``" of"``, and a last
unit of trailing non-letters (``"."``) when the text ends with one. A word is complete once a
non-letter follows it (``" color"`` may still become ``" colorful"``), or the text is final. It is
wrong when it is an American spelling in ``LEXICON``, matched as a whole word whatever its case
(``"Colorado"`` is no match; ``"colorful"`` is its own entry); its correction is the British
spelling in the word's case (``" Color"`` -> ``" Colour"``, ``"COLOR"`` -> ``"COLOUR"``).
A final answer must also end a sentence (``.``, ``!``, ``?``, maybe then closing quotes or brackets):
without that rule every correction would complete a right answer (a cut text has no other way to
be wrong) and the steering loop would end the turn there. The last unit of a final text that does
not end a sentence is wrong; its correction ends it with ``"."``; an empty answer's is ``solve``.

``Unit.stop`` is the word's end, not past the character that completed it: that character begins
the next word's token (``" color"`` then ``" is"``), and no American spelling here is a prefix of
its British one, so the rejected ``" color"`` is no token prefix of the correction ``" colour"``
(SmolLM2's tokenizer has most of these words as single tokens: a steer is then a one-token swap).

Lexicon groups: ``ize`` (organize/organise, organization/organisation, ...), ``our`` (color/colour,
favorite/favourite, ...), ``re`` (center/centre, ...), ``yse`` (analyze/analyse), ``ence``
(defense/defence), ``ll`` (traveling/travelling, jewelry/jewellery, ...) and ``other`` (gray/grey,
plow/plough, ...), with their inflections; derivatives that keep -or in British (humorous,
honorary, laborious) are not listed. Words whose British spelling depends on the sense (license,
practice, meter, program, check, tire) are left out, and so are pairs where one spelling is a
prefix of the other (catalog/catalogue, fulfill/fulfil).

**Clusters and splits.** A topic is a cluster: its prompts share answer words (a model that writes
"colors" in one phrasing writes it in the others), so every task carries ``meta["cluster"]``
(``"style/<topic>"``) and analyses resample topics, never prompts. A topic goes to train / val /
heldout by a hash (``split_of`` with the family's own ``SHARES``, 40/25/35 of the seen topics). No model is
pretrained on this family (it is for SmolLM2; ``write`` raises), so it has no pretrain share and
``tasks("pretrain")`` is empty. A train topic is asked in all four templates (more steers per topic
to collect); a val or heldout topic in one, drawn by a hash of the topic (``topic_template``), which
bounds what an evaluation costs: every val and heldout prompt is a cluster of its own. The
headwords of ``UNSEEN`` (words of the ``ize`` and ``our`` rules) are never corrected outside
heldout: train and val prompts list them in ``meta["exempt"]``, and their topics are all
``heldout`` (sub-family ``unseen``), so held-out evaluation asks whether steering taught the rule or
only the words it corrected. Unseen prompts are spread evenly through the heldout order (the first
``k`` hold ``k * n_unseen // n`` of them), so any first ``k`` is a representative mix. Today: train
83 topics (332 prompts), val 46 topics (46 prompts), heldout 136 topics (136 prompts), of which 62
unseen (46%).

Topics were kept where greedy SmolLM2 used a lexicon word in its first 64 tokens (template 0). The
45 unseen topics added for more held-out clusters were also kept only where that answer used a
word of the topic's own headword (45 of 62 candidates; 48 had some lexicon word). In the template
each val and heldout topic is asked in, greedy SmolLM2 used a lexicon word on 163 of the 182
prompts (val 42/46, heldout seen 66/74, unseen 55/62, 54 of them a word of the own headword): the
others pass unsteered.

``solve`` has no single right answer to give: it is a fixed two-sentence answer in house style on
the topic. A rewrite of the model's own answer is ``to_house_style(answer)`` (then ended with a
full stop if it stops mid-sentence), which is what a person rewriting it would type.

Doubts: proper names keep their spelling in a real house style ("Lincoln Center"); here they are
corrected like any word.
"""

from __future__ import annotations

import hashlib
import random
import re

from localpref.tasks import register
from localpref.tasks.base import Task, TaskFamily, Unit, check_split, first_n, split_of

# -- the lexicon: American spelling -> (British spelling, headword, group) -----------------------

LEXICON: dict[str, tuple[str, str, str]] = {}
HEADWORDS: dict[str, str] = {}  # headword (the key of a word's inflections) -> group


def _add(group: str, headword: str, pairs: list[tuple[str, str]]) -> None:
    HEADWORDS[headword] = group
    for american, british in pairs:
        if american in LEXICON:
            raise ValueError(f"{american!r} is in the lexicon twice")
        LEXICON[american] = (british, headword, group)


_IZE_ENDINGS = ("ize", "izes", "ized", "izing", "ization", "izations", "izational", "izer", "izers", "izable")
_IZE_STEMS = (
    "agon apolog author capital categor central character civil colon commercial custom democrat digit "
    "emphas energ equal fertil final global harmon hospital hypothes immun industrial item jeopard legal "
    "local maxim memor mesmer minim mobil modern monopol motor natural neutral normal optim organ "
    "personal popular priorit privat random real recogn revolution sanit scrutin social special stabil "
    "standard steril stigmat summar symbol sympath synthes theor tranquil traumat urban util vandal "
    "visual critic").split()
for _stem in _IZE_STEMS:
    _add("ize", _stem + "ize", [(_stem + e, _stem + e.replace("iz", "is")) for e in _IZE_ENDINGS])

# -or -> -our, with the endings that keep -our in British (not humorous, honorary, laborious, vigorous)
_OUR = {
    "col": ("", "s", "ed", "ing", "ful", "fully", "less", "ings"),
    "flav": ("", "s", "ed", "ing", "ful", "less", "ings"),
    "fav": ("", "s", "ed", "ing", "able", "ably", "ite", "ites", "itism"),
    "behavi": ("", "s", "al", "ally", "ism"),
    "neighb": ("", "s", "hood", "hoods", "ing", "ly"),
    "hon": ("", "s", "ed", "ing", "able", "ably"),
    "lab": ("", "s", "ed", "ing", "er", "ers"),
    "hum": ("", "s", "ed", "less"),
    "harb": ("", "s", "ed", "ing"),
    "rum": ("", "s", "ed"),
    "od": ("", "s", "less"),
    "vap": ("", "s"),
    "endeav": ("", "s", "ed", "ing"),
    "arm": ("", "ed", "y"),
    "sav": ("", "s", "ed", "ing", "y"),
    "savi": ("", "s"),
    "splend": ("", "s"),
    "parl": ("", "s"),
    "vig": ("",),
    "clam": ("", "s", "ed", "ing"),
    "val": ("",),
    "cand": ("",),
    "tum": ("", "s"),
    "demean": ("",),
    "ferv": ("",),
    "glam": ("",),
}
for _stem, _endings in _OUR.items():
    _add("our", _stem + "or", [(_stem + "or" + e, _stem + "our" + e) for e in _endings])
_add("our", "color", [("watercolor", "watercolour"), ("watercolors", "watercolours"),
                      ("discolored", "discoloured"), ("multicolored", "multicoloured")])
_add("our", "favor", [("unfavorable", "unfavourable"), ("disfavor", "disfavour")])
_add("our", "behavior", [("misbehavior", "misbehaviour")])

# -er -> -re ("-red", "-ring" for the verbs); not "meter", a device in both
_RE = {"cent": ("", "s", "ed", "ing", "piece", "pieces"), "epicent": ("",), "theat": ("", "s", "goers"),
       "kilomet": ("", "s"), "centimet": ("", "s"), "millimet": ("", "s"), "lit": ("", "s"), "millilit": ("", "s"),
       "fib": ("", "s", "glass"), "calib": ("",), "somb": ("",), "sab": ("", "s"), "lust": ("",), "spect": ("", "s"),
       "meag": ("",), "scept": ("", "s")}
for _stem, _endings in _RE.items():
    _add("re", _stem + "er", [(_stem + "er" + e, _stem + ("r" if e in ("ed", "ing") else "re") + e) for e in _endings])

for _stem in ("anal", "paral", "catal", "hydrol", "dial"):
    _add("yse", _stem + "yze", [(_stem + e, _stem + e.replace("yz", "ys"))
                                for e in ("yze", "yzes", "yzed", "yzing", "yzer", "yzers")])

_add("ence", "defense", [("defense", "defence"), ("defenses", "defences"), ("defenseless", "defenceless")])
_add("ence", "offense", [("offense", "offence"), ("offenses", "offences")])
_add("ence", "pretense", [("pretense", "pretence"), ("pretenses", "pretences")])

# a doubled l before a vowel ending in British
_LL_ER = ("travel", "model", "level", "signal", "quarrel", "jewel")  # these also take -er, -ers
for _stem in ("travel", "cancel", "label", "model", "fuel", "refuel", "level", "signal", "marvel", "counsel", "quarrel",
              "tunnel", "total", "dial", "channel", "equal", "rival", "pedal", "panel", "shovel", "snorkel", "duel",
              "spiral", "jewel"):
    _endings = ("ing", "ed") + (("er", "ers") if _stem in _LL_ER else ())
    _add("ll", _stem, [(_stem + e, _stem + "l" + e) for e in _endings])
_add("ll", "marvelous", [("marvelous", "marvellous"), ("marvelously", "marvellously")])
_add("ll", "jewelry", [("jewelry", "jewellery")])
_add("ll", "woolen", [("woolen", "woollen"), ("woolens", "woollens")])
_add("ll", "counselor", [("counselor", "counsellor"), ("counselors", "counsellors")])
_add("ll", "panelist", [("panelist", "panellist"), ("panelists", "panellists")])

_OTHER = {  # headword -> "american:british" pairs
    "gray": "gray:grey grays:greys grayish:greyish grayer:greyer grayest:greyest graying:greying grayed:greyed "
            "grayness:greyness",
    "aging": "aging:ageing",
    "mold": "mold:mould molds:moulds moldy:mouldy molded:moulded molding:moulding",
    "plow": "plow:plough plows:ploughs plowed:ploughed plowing:ploughing snowplow:snowplough",
    "aluminum": "aluminum:aluminium",
    "cozy": "cozy:cosy cozier:cosier coziest:cosiest coziness:cosiness cozily:cosily",
    "skeptic": "skeptic:sceptic skeptics:sceptics skeptical:sceptical skeptically:sceptically skepticism:scepticism",
    "maneuver": "maneuver:manoeuvre maneuvers:manoeuvres maneuvered:manoeuvred maneuvering:manoeuvring "
                "maneuverable:manoeuvrable",
    "pajamas": "pajamas:pyjamas pajama:pyjama",
    "mustache": "mustache:moustache mustaches:moustaches",
    "airplane": "airplane:aeroplane airplanes:aeroplanes",
    "skillful": "skillful:skilful skillfully:skilfully",
    "willful": "willful:wilful willfully:wilfully",
    "pediatric": "pediatric:paediatric pediatrician:paediatrician pediatricians:paediatricians",
    "artifact": "artifact:artefact artifacts:artefacts",
}
for _head, _pairs in _OTHER.items():
    _add("other", _head, [tuple(pair.split(":")) for pair in _pairs.split()])

BRITISH = {british for british, _, _ in LEXICON.values()}
GROUPS = ("ize", "our", "re", "yse", "ence", "ll", "other")

# Held-out words of the two largest rules: never corrected outside heldout (module docstring).
UNSEEN = ("recognize", "memorize", "neighbor", "humor")

# -- prompts ---------------------------------------------------------------------------------------

TEMPLATES = (
    "Write two sentences about {topic}.",
    "In two or three sentences, describe {topic}.",
    "Tell me about {topic} in two sentences.",
    "Write a short paragraph of two or three sentences about {topic}.",
)

# headword -> topics; each topic holds an American spelling of its headword (tests check it)
TOPICS: dict[str, list[str]] = {
    "organize": ["how a town organizes its summer festival", "how a school organizes its sports day",
                 "how volunteers organize a beach clean-up", "how a library organizes its books",
                 "how a school organizes a science fair", "how a small charity organization raises money",
                 "the organization of an ant colony", "how a family organizes a house move",
                 "how a museum organizes a new exhibition"],
    "realize": ["the moment a child realizes she can ride a bike", "the day a young painter realized her dream",
                "realizing the importance of sleep"],
    "recognize": ["how dogs recognize their owners", "recognizing an old friend in a crowd",
                  "how birds recognize their own nests", "how people recognize faces",
                  "how babies recognize their mother's voice", "how a cat recognizes its name",
                  "how bees recognize flowers", "how a teacher recognizes a student who needs help",
                  "how a town recognized its volunteers", "how penguins recognize their chicks",
                  "how doctors recognize the signs of a cold", "how a company recognizes hard work",
                  "how birdwatchers recognize birds by their songs", "how elephants recognize each other",
                  "how horses recognize their riders"],
    "apologize": ["how to apologize to a friend", "how a company should apologize to its customers",
                  "a shopkeeper who apologizes for a mistake"],
    "prioritize": ["how a busy nurse prioritizes her tasks", "prioritizing homework over games",
                   "how a city prioritizes road repairs", "how to prioritize tasks on a busy day"],
    "memorize": ["how actors memorize their lines", "memorizing a poem for school",
                 "memorizing facts before an exam", "memorizing a phone number", "how waiters memorize orders",
                 "how children memorize the times tables", "memorizing words in a new language",
                 "how taxi drivers memorize a city's streets", "how students memorize the periodic table",
                 "memorizing the names of new classmates", "how a dancer memorizes a routine",
                 "how chess players memorize openings"],
    "specialize": ["a bakery that specializes in sourdough", "a doctor who specializes in children's health"],
    "minimize": ["how to minimize food waste at home", "how a runner minimizes injuries",
                 "how to minimize noise in a busy office"],
    "maximize": ["how farmers maximize their harvest", "how a small shop maximizes its space"],
    "modernize": ["how a company can modernize its organization", "modernizing an old kitchen",
                  "how a village modernized its railway station", "modernizing a city's buses"],
    "civilize": ["an ancient civilization along a river", "the rise and fall of a lost civilization",
                 "what made the Roman civilization strong", "the civilization of ancient Egypt"],
    "emphasize": ["why teachers emphasize reading every day", "how a coach emphasizes teamwork",
                  "why doctors emphasize regular exercise"],
    "criticize": ["how to respond when someone criticizes your work", "how to criticize someone's work kindly"],
    "summarize": ["how to summarize a long book", "summarizing a news article for a friend"],
    "visualize": ["how athletes visualize a race before it starts", "how data visualization helps scientists"],
    "categorize": ["how scientists categorize animals", "categorizing photos on a phone"],
    "customize": ["customizing a bicycle", "how gamers customize their characters"],
    "socialize": ["why puppies need to socialize", "why older people need to socialize"],
    "optimize": ["how engineers optimize a car engine", "optimizing a daily schedule",
                 "how a delivery company optimizes its routes"],
    "globalize": ["how globalization changed the clothes we buy"],
    "urbanize": ["the urbanization of a farming region"],
    "color": ["the colors of autumn leaves", "the colors of a rainbow", "choosing paint colors for a bedroom",
              "the colors of a coral reef", "a colorful market stall", "the colors of the sky at sunset",
              "the colors of a peacock's tail", "the colors of spring flowers", "the colors of a busy fruit market"],
    "favor": ["your favorite season", "a child's favorite toy", "your favorite color",
              "your favorite meal of the day"],
    "flavor": ["your favorite flavor of ice cream", "the flavors of a summer fruit salad",
               "the flavor of fresh bread", "flavoring soup with herbs", "the flavors of street food",
               "the flavor of homemade lemonade", "the flavors of a spicy curry"],
    "behavior": ["a cat's behavior at night", "the behavior of honey bees",
                 "how a teacher can encourage good behavior", "the behavior of crowds at a football match",
                 "a puppy's behavior during its first week at home", "the behavior of wolves in a pack"],
    "neighbor": ["a friendly neighbor who helps in the garden", "a helpful neighbor",
                 "a quiet neighborhood in winter", "a new neighbor moving in next door",
                 "a neighborhood block party", "a neighborhood park on a Sunday", "borrowing sugar from a neighbor",
                 "a noisy neighbor upstairs", "neighbors sharing vegetables from their gardens",
                 "a neighborhood watch group", "a neighborhood library", "neighbors helping each other after a storm",
                 "a neighborhood garden", "children playing in a neighborhood street",
                 "a neighbor who plays the piano", "a neighborhood café"],
    "honor": ["a soldier's honor", "what honor means to a knight", "a sense of honor in sports",
              "the honor of carrying a flag", "the honor of winning a gold medal"],
    "labor": ["the labor of farm workers", "labor-saving gadgets in the kitchen",
              "the labor of building a stone wall", "the labor of miners in the past",
              "labor unions and workers' rights"],
    "humor": ["the humor in a children's cartoon", "why a sense of humor matters at work",
              "the humor of a grandfather's stories", "British humor on television", "the humor in a school play",
              "a teacher with a good sense of humor", "using humor to calm a nervous patient",
              "the humor of a stand-up comedian", "humor in a wedding speech", "the humor in a funny birthday card",
              "why a sense of humor helps in hard times", "the humor of a silly pet", "humor in a comic strip",
              "a doctor who uses humor with patients", "the humor in an old silent film", "humor between old friends",
              "the humor of a family dinner", "dark humor in a mystery novel", "a humorless boss who learns to laugh"],
    "harbor": ["the harbor at sunrise", "a small fishing harbor", "a busy harbor town in summer",
               "seals in the harbor", "an old harbor with wooden boats"],
    "rumor": ["how a rumor spreads in a school", "a rumor about a hidden treasure", "how to stop a rumor",
              "a rumor about a new shop in town"],
    "vapor": ["water vapor in clouds", "how water vapor forms on a cold window",
              "water vapor rising from a hot spring"],
    "armor": ["a knight's shining armor", "the armor of an armadillo", "the armor of a medieval soldier"],
    "splendor": ["the splendor of a royal palace", "the splendor of the northern lights"],
    "parlor": ["an old ice cream parlor"],
    "demeanor": ["a nurse's calm demeanor"],
    "center": ["the city center at night", "a community center for teenagers", "a shopping center at Christmas",
               "the town center on market day", "a visitor center at a national park",
               "a sports center in a small town", "a science center for children", "the center of a spider's web"],
    "theater": ["a night at the theater", "a school theater performance", "an old theater being restored",
                "an open-air theater in summer", "a puppet theater for children", "the history of a famous theater"],
    "kilometer": ["running ten kilometers for charity", "a bike ride of fifty kilometers",
                  "walking five kilometers to school", "a train journey of three hundred kilometers"],
    "liter": ["a liter of milk", "how many liters of water a person should drink",
              "a car that uses five liters of fuel per hundred kilometers"],
    "fiber": ["foods rich in fiber", "how fiber helps digestion", "cotton fibers used to make clothes",
              "fiber in a healthy breakfast"],
    "meager": ["a meager harvest after a dry summer"],
    "somber": ["the somber mood at a funeral"],
    "centimeter": ["a plant that grows a few centimeters a day"],
    "analyze": ["how scientists analyze data", "how a teacher can analyze a student's progress",
                "how a coach analyzes a football match", "how doctors analyze blood tests",
                "analyzing a poem in class", "how detectives analyze clues", "how economists analyze prices",
                "how a chess player analyzes a game"],
    "paralyze": ["how fear can paralyze a person", "a snowstorm that paralyzed a city"],
    "defense": ["the defense of a medieval castle", "a football team's defense", "the body's defense against colds",
                "how a hedgehog's spines are its defense", "how a castle's walls served as its defense",
                "the defense of a goalkeeper"],
    "offense": ["taking offense at a joke", "a minor driving offense"],
    "travel": ["traveling by train", "traveling to a new city", "tips for traveling with a small child",
               "a traveling circus", "the joys of traveling alone", "traveling on a budget",
               "traveling by ship across the ocean"],
    "cancel": ["a canceled flight", "a concert canceled at the last minute"],
    "model": ["modeling clay for children", "modeling the weather with computers"],
    "fuel": ["a rocket fueled by liquid hydrogen"],
    "refuel": ["refueling a plane between flights"],
    "marvelous": ["a marvelous day at the seaside", "a marvelous view from a mountain top"],
    "jewelry": ["choosing jewelry for a gift", "handmade jewelry at a craft fair", "jewelry made from sea glass"],
    "jewel": ["a jeweler's shop in an old town"],
    "counselor": ["a school counselor helping students"],
    "tunnel": ["a mole tunneling under a lawn"],
    "woolen": ["a warm woolen jumper", "woolen socks in winter"],
    "gray": ["gray skies on a winter morning", "gray clouds over the sea", "a gray cat on a windowsill",
             "an old gray castle", "a gray whale in the ocean"],
    "aging": ["the aging of wine in barrels"],
    "mold": ["mold on old bread", "mold in a damp bathroom", "mold growing on cheese"],
    "plow": ["plowing a field in spring", "a horse pulling a plow"],
    "aluminum": ["recycling aluminum cans", "why bicycles are made of aluminum", "aluminum foil in the kitchen"],
    "cozy": ["a cozy reading corner", "a cozy café on a rainy day"],
    "skeptic": ["a skeptical scientist", "why some people are skeptical about ghosts",
                "a skeptical customer at a car dealership"],
    "pajamas": ["wearing pajamas all day"],
    "mustache": ["a man with a big mustache"],
    "airplane": ["a paper airplane contest"],
    "pediatric": ["a visit to the pediatrician"],
    "maneuver": ["a tricky parking maneuver", "a pilot's maneuvers at an air show"],
}

_WORD = re.compile(r"[^\W\d_]+")  # a run of letters (any script); digits, "_", "'" and "-" end a word
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]*]*\s*\Z")
# Of the topics of seen headwords, by hash. No pretrain share: no model is pretrained on this family.
SHARES = {"train": 0.40, "val": 0.25, "heldout": 0.35}


def topic_split(headword: str, topic: str) -> str:
    """The split of a topic: heldout for an ``UNSEEN`` headword, else by hash (``SHARES``)."""
    return "heldout" if headword in UNSEEN else split_of(f"style/{topic}", SHARES)


def topic_template(topic: str) -> int:
    """The one template a val or heldout topic is asked in, drawn by a hash of the topic."""
    return int(hashlib.sha256(f"style/template/{topic}".encode()).hexdigest()[:8], 16) % len(TEMPLATES)


def british(word: str) -> str | None:
    """The house spelling of ``word`` in its case, or None when ``word`` is no American spelling of ``LEXICON``."""
    entry = LEXICON.get(word.lower())
    if entry is None:
        return None
    fixed = entry[0]
    if word.isupper() and len(word) > 1:
        return fixed.upper()
    return fixed[0].upper() + fixed[1:] if word[0].isupper() else fixed


def _judged(meta: dict, word: str) -> bool:
    """``word`` breaks the house style for this prompt (its headword is not exempt)."""
    entry = LEXICON.get(word.lower())
    return entry is not None and entry[1] not in meta.get("exempt", ())


def _end_sentence(tail: str) -> str:
    """A trailing non-letter piece made to end a sentence: ``","`` -> ``"."``, ``'"'`` -> ``'".'``."""
    return re.sub(r"[\s,;:\-–—]*\Z", "", tail) + "."


@register
class Style(TaskFamily):
    name = "style"
    unit_name = "word"

    def tasks(self, split: str, n: int | None = None, seed: int = 0) -> list[Task]:
        check_split(split)
        seen, unseen = [], []
        for headword, topics in TOPICS.items():
            is_unseen = headword in UNSEEN
            for topic in topics:
                if topic_split(headword, topic) != split:
                    continue
                meta = {"family": self.name, "topic": topic, "headword": headword, "group": HEADWORDS[headword],
                        "split": split, "subfamily": "unseen" if is_unseen else "seen", "cluster": f"style/{topic}",
                        "exempt": [] if split == "heldout" else sorted(UNSEEN)}
                # all templates of a train topic (more steers to collect); one of a val or heldout topic
                templates = range(len(TEMPLATES)) if split == "train" else (topic_template(topic),)
                for i in templates:
                    prompt = [{"role": "user", "content": TEMPLATES[i].format(topic=topic)}]
                    task = Task(f"style/{headword}/{topic.replace(' ', '-')}/t{i}", prompt, {**meta, "template": i})
                    (unseen if is_unseen else seen).append(task)
        rng = random.Random(f"style/{split}/{seed}")
        rng.shuffle(seen)
        rng.shuffle(unseen)
        # unseen prompts spread evenly: the first k hold k * n_unseen // total of them, for every k
        pool, n_unseen, total = [], len(unseen), len(seen) + len(unseen)
        for k in range(1, total + 1):
            taken = n_unseen - len(unseen)
            pool.append((unseen if k * n_unseen // total > taken else seen).pop())
        return first_n(pool, self.name, split, n)

    def units(self, text: str, *, final: bool) -> list[Unit]:
        out, start = [], 0
        for match in _WORD.finditer(text):
            end = match.end()
            out.append(Unit(start, end, end, complete=final or end < len(text)))
            start = end
        if start < len(text) or not out:  # trailing non-letters (or an empty text): one last unit
            out.append(Unit(start, len(text), len(text), complete=final))
        return out

    def unit_ok(self, meta: dict, text: str, units: list[Unit], k: int) -> bool:
        body = text[units[k].start:units[k].end]
        word = _WORD.search(body)
        if word is not None and _judged(meta, word.group()):
            return False
        # a final answer ends a sentence (module docstring); the last unit is complete only when final
        last_of_final = k == len(units) - 1 and units[k].complete
        return not last_of_final or bool(_SENTENCE_END.search(text))

    def fix_unit(self, meta: dict, text: str, units: list[Unit], k: int) -> str:
        body = text[units[k].start:units[k].end]
        if k == 0 and not body.strip():  # said nothing: the correction is a whole answer
            return self.solve(meta)
        word = _WORD.search(body)
        if word is not None and _judged(meta, word.group()):
            body = body[:word.start()] + british(word.group())
        if k == len(units) - 1 and units[k].complete and not _SENTENCE_END.search(body):
            body = body + "." if word is not None else _end_sentence(body)  # "... colour" -> "... colour."
        return body

    def solve(self, meta: dict) -> str:
        """A fixed answer in house style on the prompt's topic. There is no single right answer: what
        a rewrite of the model's own answer costs is better estimated by ``to_house_style`` of it."""
        topic = to_house_style(meta["topic"])  # topics spell their cue the American way
        return f"Here is a short note on {topic}. It keeps to the house style, with British spelling throughout."

    def write(self, meta: dict, rng: random.Random, error_rate: float) -> str:
        raise NotImplementedError("family 'style' is for SmolLM2's own habit (American spelling); it has no tiny "
                                  "task model to pretrain, so it writes no pretraining answers")


def to_house_style(text: str, meta: dict | None = None) -> str:
    """``text`` with every judged American spelling replaced by its house spelling (the words only:
    it does not end an unfinished sentence)."""
    meta = meta or {}
    return _WORD.sub(lambda m: british(m.group()) if _judged(meta, m.group()) else m.group(), text)
