"""Chat templates (tierlm.chat) rendered as transformers' apply_chat_template renders them, and
their use by model.chat, `tierlm generate --chat` and `tierlm chat`."""

import io
import json
import os

import models
import pytest
import tierlm
from tierlm.chat import chat_template, render_chat
from tierlm.cli import main

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# whitespace control, namespace, tojson, loop controls, special tokens, a generation block
BUSY = "\n".join(
    [
        "{{ bos_token }}",
        "{%- set ns = namespace(system='') %}",
        "{%- for m in messages %}",
        "    {%- if m['role'] == 'system' %}{% set ns.system = m['content'] %}{% continue %}"
        "{% endif %}",
        "    {%- if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('bad role ' + m['role']) }}{% endif %}",
        "    [{{ m['role'] | upper }}] {{ m['content'] | tojson }}",
        "    {%- if m['role'] == 'assistant' %}{% generation %} {{ m['content'] }}{{ eos_token }}"
        "{% endgeneration %}{% endif %}",
        "{% endfor %}",
        "{%- if ns.system %}(system: {{ ns.system }}){% endif %}",
        "{%- if tools %}{{ tools | tojson(indent=2) }}{% endif %}",
        "{%- if add_generation_prompt %}[ASSISTANT]{% endif %}",
    ]
)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": 'Say "hi" — ünïcödé'},
    {"role": "assistant", "content": "hi"},
    {"role": "user", "content": "again\n\twith whitespace  "},
]


def hf_tokenizer(tmp_path, template):
    transformers = pytest.importorskip("transformers")
    models._import()
    models.tiny_tokenizer(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("template", [CHATML, BUSY], ids=["chatml", "busy"])
@pytest.mark.parametrize("generation", [True, False])
def test_render_equals_transformers(tmp_path, template, generation):
    tok = hf_tokenizer(tmp_path, template)
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    for messages in (MESSAGES, MESSAGES[1:2]):
        expected = tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation
        )
        assert render_chat(template, messages, generation, special) == expected
    tools = [{"name": "f", "parameters": {"x": "int"}}]
    expected = tok.apply_chat_template(MESSAGES, tools=tools, tokenize=False)
    assert render_chat(template, MESSAGES, False, special, tools=tools) == expected


def test_errors():
    with pytest.raises(tierlm.InvalidArgumentError, match="chat template: bad role tool"):
        render_chat(BUSY, [{"role": "tool", "content": "x"}])
    with pytest.raises(tierlm.NotFoundError, match="no chat template"):
        render_chat(None, MESSAGES)
    with pytest.raises(tierlm.InvalidArgumentError, match="list of dicts"):
        render_chat(CHATML, "hello")


def test_template_lookup(tmp_path):
    config = {
        "chat_template": [{"name": "default", "template": CHATML}],
        "eos_token": {"content": "</s>"},
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert chat_template(tmp_path) == (CHATML, {"eos_token": "</s>"})
    (tmp_path / "chat_template.jinja").write_text(BUSY)
    assert chat_template(tmp_path)[0] == BUSY
    assert chat_template(None) == (None, {})


@pytest.fixture(scope="module")
def chat_package(tmp_path_factory):
    """A tiny f32 llama package whose tokenizer carries the ChatML template."""
    tmp = tmp_path_factory.mktemp("chat")
    # vocabulary 300: the tokenizer's bytes and merges all have rows in the embedding
    _, hf_dir = models.hf_checkpoint("llama", tmp / "hf", tokenizer=True, vocab_size=300)
    path = os.path.join(hf_dir, "tokenizer_config.json")
    config = json.load(open(path))
    config["chat_template"] = CHATML
    json.dump(config, open(path, "w"))
    return tierlm.export(hf_dir, tmp / "pkg", progress=False)


def test_model_chat(chat_package):
    model = tierlm.load(chat_package)
    messages = [{"role": "user", "content": "the quick brown fox"}]
    text = render_chat(CHATML, messages, True, {"bos_token": "<s>", "eos_token": "</s>"})
    ids = list(model.tokenizer.encode(text, add_special_tokens=False).ids)
    assert model.chat_prompt(messages) == ids
    result = model.chat(messages, max_new_tokens=5, stop_at_eos=False)
    assert result.prompt_ids == ids
    assert result.output_ids == model.generate(ids, max_new_tokens=5, stop_at_eos=False).output_ids


def test_cli_generate_chat_and_chat(chat_package, capsys):
    model = tierlm.load(chat_package)
    messages = [{"role": "user", "content": "tiered memory"}]
    expected = model.chat(messages, max_new_tokens=4, stop_at_eos=False)
    argv = [
        "generate",
        chat_package,
        "--chat",
        "--prompt",
        "tiered memory",
        "--max-new-tokens",
        "4",
    ]
    assert main(argv + ["--json", "--no-stop-at-eos"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_ids"] == expected.prompt_ids and out["output_ids"] == expected.output_ids
    assert main(["generate", chat_package, "--chat", "--ids", "1,2"]) == 1
    assert "--chat takes the user message as --prompt" in capsys.readouterr().err

    from tierlm.cli import build_parser
    from tierlm.cli import chat as chat_cli

    args = build_parser().parse_args(
        ["chat", chat_package, "--max-new-tokens", "3", "--system", "S"]
    )
    out = io.StringIO()
    assert chat_cli.run(args, stdin=io.StringIO("tiered memory\n\nthe fox\n"), out=out) == 0
    replies = out.getvalue().split("\n")

    def streamed(history):
        return "".join(t.text for t in model.stream(model.chat_prompt(history), max_new_tokens=3))

    history = [{"role": "system", "content": "S"}, *messages]
    assert replies[0] == streamed(history)
    reply = model.chat(history, max_new_tokens=3).text
    history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "the fox"}]
    assert replies[1] == streamed(history)
