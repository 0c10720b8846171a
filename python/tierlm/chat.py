"""Chat templates: the package's template (from its tokenizer files, as transformers finds it)
rendered as transformers' apply_chat_template renders it: a sandboxed jinja2 environment with
trim_blocks/lstrip_blocks, loop controls, and the same globals and filters.
"""

import json
import os
from datetime import datetime

from tierlm.errors import CorruptError, InvalidArgumentError, NotFoundError

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(value):
    return value.get("content") if isinstance(value, dict) else value


def chat_template(tokenizer_dir):
    """Returns (template, special tokens {bos_token: "<s>", ...}) of a tokenizer directory;
    template is None when it has none. Looks where transformers does: chat_template.jinja,
    chat_template.json, then tokenizer_config.json (a named list picks "default")."""
    if not tokenizer_dir:
        return None, {}
    config = {}
    config_path = os.path.join(tokenizer_dir, "tokenizer_config.json")
    if os.path.exists(config_path):
        config = _read_json(config_path)
    special = {k: _token_text(config.get(k)) for k in SPECIAL_TOKENS if config.get(k)}
    jinja = os.path.join(tokenizer_dir, "chat_template.jinja")
    if os.path.exists(jinja):
        with open(jinja) as f:
            return f.read(), special
    template = config.get("chat_template")
    json_path = os.path.join(tokenizer_dir, "chat_template.json")
    if os.path.exists(json_path):
        template = _read_json(json_path).get("chat_template", template)
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template, special


def _read_json(path):
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as error:
            raise CorruptError(f"{path}: not valid JSON ({error})") from None


def _environment():
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """transformers' {% generation %} block: renders its body (tierlm tracks no masks)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno
            )

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return env


def render_chat(template, messages, add_generation_prompt=True, special_tokens=None, **extra):
    """The prompt text of messages ([{"role": ..., "content": ...}, ...]) under template;
    extra keyword arguments reach the template as variables (tools, documents, ...)."""
    import jinja2

    if not template:
        raise NotFoundError("the package has no chat template (its tokenizer files carry none)")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidArgumentError(
            'messages must be a list of dicts like {"role": "user", "content": "..."}'
        )
    context = {"tools": None, "documents": None, **(special_tokens or {}), **extra}
    try:
        return (
            _environment()
            .from_string(template)
            .render(messages=messages, add_generation_prompt=add_generation_prompt, **context)
        )
    except jinja2.TemplateError as error:
        raise InvalidArgumentError(f"chat template: {error}") from None
