"""The subject-word rule on prompts in T2I-CompBench's style (most of them the benchmark's own, MIT licence, © 2023
HKU): expected word positions worked out by hand, counting words from 0 and skipping punctuation."""

import pytest

from noise_diffusion.baselines.tokens import require_subjects, subject_words, word_list
from noise_diffusion.errors import UserError

HAND_WORKED = [
    # attribute binding: the nouns, not the colours, shapes or textures
    ("a red book and a blue bowl", (2, 6)),                          # a0 red1 book2 and3 a4 blue5 bowl6
    ("an oval mirror and a rectangular painting", (2, 6)),
    ("a metallic ring and a fluffy hat", (2, 6)),                    # 'ring' is no -ing verb
    ("a red rose and a white carnation", (2, 6)),                    # 'rose' is no verb before 'and'
    ("a green leaf and a yellow butterfly", (2, 6)),                 # 'butterfly' is no adverb
    ("rubber gloves and a fluffy pillow", (1, 5)),
    ("a cubic dice and a cylindrical pencil holder", (2, 7)),        # the compound's head: holder7
    ("a round pizza and a rectangular piece of lasagna", (2, 8)),    # piece6 of7 lasagna8
    ("a cubic block and a cylindrical bottle of water", (2, 6)),     # a container is what is drawn: bottle6
    ("A black and white cat sits in a white sink.", (4, 9)),         # A0 black1 and2 white3 cat4 sits5 in6 a7 w8 sink9
    ("The wooden ladder and glass jar hold the metallic screws.", (2, 5)),  # The0 wooden1 ladder2 and3 glass4 jar5
    # spatial relations
    ("a girl on the top of a frog", (1, 7)),                         # a0 girl1 on2 the3 top4 of5 a6 frog7
    ("a horse on side of a bicycle", (1, 6)),
    ("a cup on the right of a dog", (1, 7)),
    ("a pig near a clock", (1, 4)),
    # actions
    ("A man is holding a book and reading on a park bench.", (1, 5)),       # A0 man1 is2 holding3 a4 book5
    ("A couple is stargazing in a field.", (1, 6)),
    ("A woman is doing dishes in the kitchen.", (1, 4)),                    # dishes4
    ("A group of friends are playing frisbee in the park.", (3, 6)),        # A0 group1 of2 friends3 ... frisbee6
    ("A man is speaking to his boss about a project at work.", (1, 6)),     # to4 his5 boss6
    ("The detective carefully examined the evidence found at the crime scene.", (1, 5)),
    # complex sentences
    ("The black chair was next to the silver table.", (2, 8)),
    ("The sleek black laptop sat on the clean white desk.", (3, 9)),
    ("The crisp white sheet covered the lumpy blue mattress.", (3, 8)),
    ("The striped black and white cat lay next to the soft grey blanket.", (5, 12)),
    ("The rough brown bark of the tree contrasted with the soft green leaves.", (3, 12)),
    ("The fluffy white clouds floated lazily in the blue sky.", (3, 9)),
    ("The fluttering butterfly landed on the fragrant flower and the thorny thistle.", (2, 7)),
    ("The soft, pillowy texture of the fresh bread contrasted with the crisp, crunchy exterior.", (3, 13)),
    ("The glowing moon rose above the distant hill.", (2, 7)),
    ("The fiery, blazing sun sank below the horizon, painting the sky.", (3, 7)),
]


@pytest.mark.parametrize("prompt, expected", HAND_WORKED)
def test_subjects_of_benchmark_style_prompts(prompt, expected):
    assert subject_words(prompt) == expected, [word_list(prompt)[i] for i in subject_words(prompt)]


# the authors' own files mark the subjects by hand ("indices", start token = 0, one token per word)
AUTHORS = [("a dog and a frog", [2, 5]), ("a pink crown and a purple bow", [3, 7]), ("a horse with a glasses", [2, 5]),
           ("an elephant under a rabbit", [2, 5]), ("a blue balloon on an orange bench", [3, 7])]


@pytest.mark.parametrize("prompt, indices", AUTHORS)
def test_agrees_with_the_authors_indices(prompt, indices):
    assert [i + 1 for i in subject_words(prompt)] == indices


@pytest.mark.parametrize("prompt", ["a cat", "beautiful scenery", "a dog and", "The", "and a dog"])
def test_no_subjects_is_a_one_line_error(prompt):
    with pytest.raises(UserError, match="cannot find two subjects") as error:
        subject_words(prompt)
    assert "\n" not in str(error.value)


def test_the_attention_baselines_check_every_prompt_first():
    require_subjects(["a cat and a dog", "a cup on the right of a dog"], "initno")
    with pytest.raises(UserError, match=r"initno needs two subject words.* in 2 prompts \(e.g. 'a cat'\)"):
        require_subjects(["a cat and a dog", "a cat", "beautiful scenery", "a cat"], "initno")


def test_evaluate_stops_before_any_model_for_initno_only(tmp_path, capsys):
    from noise_diffusion.commands import evaluate as evaluate_cli

    data = tmp_path / "mine.txt"
    data.write_text("a cat and a dog\nbeautiful scenery\n")
    argv = ["--dataset", str(data), "--sd_version", str(tmp_path / "no-such-model"), "--result_root",
            str(tmp_path / "out")]
    with pytest.raises(UserError, match="initno needs two subject words"):
        evaluate_cli.main([*argv, "--methods", "none", "initno"])
    # every other method runs the prompt: it gets past the subject check to the model (missing here)
    with pytest.raises(UserError) as error:
        evaluate_cli.main([*argv, "--methods", "none", "noise_diffusion"])
    assert "subject" not in str(error.value)


@pytest.fixture(scope="module")
def letter_tokenizer(tmp_path_factory):
    """The test models' CLIP tokenizer: one token per letter (the last of a word carries '</w>'), one per '.' or ','."""
    from transformers import CLIPTokenizer

    from noise_diffusion.testing import write_clip_tokenizer

    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path_factory.mktemp("tokenizer")))


@pytest.mark.parametrize("prompt, expected", [
    ("a cup on the right of a dog", [4, 20]),  # a1 cup2-4 on5-6 the7-9 right10-14 of15-16 a17 dog18-20
    # The1-3 black4-8 chair9-13 was next to the silver16..31 table32-36 .37: the full stop is a token of its own
    ("The black chair was next to the silver table.", [13, 36]),
    # The1-3 soft4-7 ,8 pillowy9-15 bread16-20 contrasted21-30 with31-34 the35-37 crisp38-42 ,43 crunchy44-50
    # crust51-55 .56
    ("The soft, pillowy bread contrasted with the crisp, crunchy crust.", [20, 55]),
])
def test_token_positions_count_the_punctuation(letter_tokenizer, prompt, expected):
    from noise_diffusion.baselines.tokens import subject_token_indices

    ids = letter_tokenizer(prompt).input_ids
    assert subject_token_indices(letter_tokenizer, prompt) == expected
    tokens = letter_tokenizer.convert_ids_to_tokens([ids[i] for i in expected])
    words = [word_list(prompt)[i] for i in subject_words(prompt)]
    assert tokens == [f"{w[-1]}</w>" for w in words]  # each index is its subject's last letter
