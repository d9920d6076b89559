"""SynthFaces captions in the style of MM-CelebA-HQ, generated from a face's attributes.

"The woman has wavy blond hair and arched eyebrows. She is wearing red lipstick." Captions vary
the subject, the verbs, the order and the choice of attributes they mention, as real captions do.
Caption 0 is complete: it names every colour attribute of the face that `read_color` can check
(hair, eyes, lips or their absence of lipstick, skin, hat, clothes, background) and every
accessory, so the evaluate stage can compare generated pixels with it. The others mention each
item with a probability; hair, clothes and background colours stay in most of them, so a
text-conditioned model learns them.
"""

from __future__ import annotations

import numpy as np

_SUBJECTS = {
    "woman": ("The woman", "This woman", "The lady", "A woman", "This young woman", "The person"),
    "man": ("The man", "This man", "The gentleman", "A man", "This young man", "The person"),
}
_PRONOUN = {"woman": "She", "man": "He"}
_HAT_NOUN = {"beanie": "beanie", "cap": "cap", "fedora": "hat"}
_CLOTH_NOUN = {"t-shirt": ("t-shirt", "top"), "v-neck": ("v-neck top", "v-neck sweater"),
               "shirt": ("shirt", "collared shirt"), "scoop": ("scoop-neck top", "top")}
_HAIR_STYLE = {
    "short": ("short {c}hair",), "long": ("long {c}hair",),
    "wavy": ("wavy {c}hair", "long wavy {c}hair"),
    "curly": ("curly {c}hair", "voluminous curly {c}hair"),
    "bob": ("a {c}bob", "{c}bob-cut hair"),
    "bangs": ("{c}hair with bangs", "{c}hair cut with bangs"),
    "bun": ("{c}hair tied in a bun",), "pigtails": ("{c}hair in pigtails",),
}
_NOSE = {"small": ("a small nose", "a little nose"), "big": ("a big nose", "a large nose"),
         "medium": ("a straight nose", "a medium-sized nose")}
# Probability that a caption other than caption 0 mentions an item.
_P_MENTION = {"hair_color": 0.9, "hair_style": 0.8, "cloth": 0.85, "background": 0.85,
              "eyes": 0.55, "skin": 0.55, "lips": 0.65, "brows": 0.6, "nose": 0.4,
              "accessory": 0.8, "mouth": 0.5, "extra": 0.6}


def make_captions(attributes: dict, rng: np.random.Generator, n: int) -> list[str]:
    """`n` captions of a face; caption 0 mentions every colour attribute and accessory."""
    return [_caption(attributes, rng, full=(i == 0)) for i in range(n)]


def _caption(a: dict, rng: np.random.Generator, full: bool) -> str:
    def mention(key: str) -> bool:
        return bool(rng.random() < _P_MENTION[key])

    he = _PRONOUN[a["gender"]]
    subject = _choice(rng, _SUBJECTS[a["gender"]])
    has = _has_phrases(a, rng, full, mention)
    wears = _wear_phrases(a, rng, full, mention)
    if len(has) > 2 and rng.random() < 0.5:
        has = [has[0]] + [str(x) for x in rng.permutation(has[1:])]  # hair (if named) first
    sentences = []
    if a["hair_style"] == "bald" and (full or mention("hair_style")):
        sentences.append(f"{subject} is bald" + (f" and has {_join(has)}." if has else "."))
        has, subject = [], he
    cut = len(has) if len(has) <= 3 else int(rng.integers(2, 4))
    if has[:cut]:
        sentences.append(f"{subject} has {_join(has[:cut])}.")
        subject = he
    if has[cut:]:
        sentences.append(f"{he} also has {_join(has[cut:])}.")
    if wears:
        verb = _choice(rng, ("is wearing", "wears"))
        sentences.append(f"{subject} {verb} {_join(wears)}.")
    if full or mention("background"):
        sentences.append(_background_sentence(a, rng, he))
    if not sentences:
        sentences.append(f"{subject} looks at the camera.")
    return " ".join(sentences)


def _has_phrases(a: dict, rng, full: bool, m) -> list[str]:
    """Noun phrases after 'has': hair, eyes, skin, brows, nose, beard, cheeks, open mouth."""
    out = []
    hair = _hair_phrase(a, rng, full or m("hair_color"), full or m("hair_style"))
    if hair:
        out.append(hair)
    if full or m("eyes"):
        out.append(f"{a['eye_color']} eyes")
    if full or m("skin"):
        tone = a["skin_tone"]
        out.append(_choice(rng, (f"{tone} skin", f"{_article(tone)} {tone} complexion")))
    if full or m("brows"):
        out.append(f"{a['brows']} eyebrows")
    if full or m("nose"):
        out.append(_choice(rng, _NOSE[a["nose"]]))
    if a["beard"] and (full or m("extra")):
        out.append(_choice(rng, ("a beard", "a stubbly beard")))
    if a["rosy_cheeks"] and (full or m("extra")):
        out.append("rosy cheeks")
    if a["mouth_open"] and (full or m("mouth")):
        out.append(_choice(rng, ("an open mouth", "a slightly open mouth")))
    if not a["lipstick"] and (full or m("lips")):
        out.append("natural lips")
    return out


def _wear_phrases(a: dict, rng, full: bool, m) -> list[str]:
    """Noun phrases after 'is wearing': lipstick, hat, glasses, jewellery, clothes."""
    out = []
    if a["lipstick"] and (full or m("lips")):
        out.append(f"{a['lip_color']} lipstick")
    if a["hat"] and (full or m("accessory")):
        out.append(f"a {a['hat_color']} {_HAT_NOUN[a['hat_style']]}")
    if a["eyeglasses"] and (full or m("accessory")):
        out.append(_choice(rng, ("eyeglasses", "glasses", f"{a['glasses_style']} glasses")))
    if a["earrings"] and (full or m("accessory")):
        style = {"studs": "stud", "hoops": "hoop", "drops": "drop"}[a["earring_style"]]
        out.append(_choice(rng, ("earrings", f"{a['jewelry_metal']} {style} earrings")))
    if a["necklace"] and (full or m("accessory")):
        out.append(_choice(rng, ("a necklace", f"a {a['jewelry_metal']} necklace")))
    if full or m("cloth"):
        out.append(f"a {a['cloth_color']} {_choice(rng, _CLOTH_NOUN[a['cloth_style']])}")
    return out


def _hair_phrase(a: dict, rng, color: bool, style: bool) -> str | None:
    """'wavy blond hair', 'a blond bob', 'hair with bangs' ... or None for a bald head."""
    s = a["hair_style"]
    if s == "bald" or not (color or style):
        return None
    c = a["hair_color"] + " " if color else ""
    return _choice(rng, _HAIR_STYLE[s] if style else ("{c}hair",)).format(c=c)


def _background_sentence(a: dict, rng, pronoun: str) -> str:
    c = a["background_color"]
    return _choice(rng, (f"The background is {c}.", f"The photo has a {c} background.",
                         f"{pronoun} is in front of a {c} background.",
                         f"{pronoun} poses against a {c} backdrop."))


def _choice(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
