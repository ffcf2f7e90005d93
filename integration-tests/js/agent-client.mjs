// An independent client of the canister: the JS agent @icp-sdk/core (the
// successor of @dfinity/agent) with the interface's IDL generated from
// candid/icllm.did. It fetches the replica's root key, signs as a fresh
// Ed25519 identity, and calls `health`, `start_job` and `poll` (verifying
// certificates and query signatures as it does against mainnet).
//
// usage: node agent-client.mjs URL CANISTER_ID IDL_MODULE PROMPT MAX_TOKENS
// prints one JSON object on stdout.
import { HttpAgent, Actor } from "@icp-sdk/core/agent";
import { Ed25519KeyIdentity } from "@icp-sdk/core/identity";
import { pathToFileURL } from "node:url";

const [url, canisterId, idlPath, prompt, maxTokens] = process.argv.slice(2);
const { idlFactory } = await import(pathToFileURL(idlPath).href);

const identity = Ed25519KeyIdentity.generate();
const agent = await HttpAgent.create({ host: url, identity, shouldFetchRootKey: true });
const icllm = Actor.createActor(idlFactory, { agent, canisterId });

const unwrap = (result, what) => {
  if ("Err" in result) throw new Error(`${what}: ${JSON.stringify(result.Err)}`);
  return result.Ok;
};

const health = await icllm.health();
const jobId = unwrap(
  await icllm.start_job({
    prompt,
    max_tokens: Number(maxTokens),
    temperature: [0],
    top_k: [],
    top_p: [],
    messages: [],
    seed: [42n],
    prompt_tokens: [],
    ctx_size: [],
    kv_cache: [],
    continue_from: [],
    chat_template: [],
    notify: [],
  }),
  "start_job",
);

const tokens = [];
let text = "";
let since = 0;
let view;
let polls = 0;
for (;;) {
  view = unwrap(await icllm.poll(jobId, [since]), "poll");
  polls += 1;
  tokens.push(...view.tokens);
  text += view.text;
  since = view.next_since;
  const status = Object.keys(view.status)[0];
  if (!["Queued", "Prefilling", "Generating"].includes(status)) break;
  await new Promise((r) => setTimeout(r, 100));
}

console.log(
  JSON.stringify({
    principal: identity.getPrincipal().toText(),
    model_state: health.model_state,
    job_id: jobId.toString(),
    status: view.status,
    tokens,
    text,
    polls,
    messages: view.messages.toString(),
    max_message_instructions: view.max_message_instructions.toString(),
  }),
);
