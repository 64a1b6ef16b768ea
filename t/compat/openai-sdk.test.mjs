// Compatibility test: the official `openai` npm SDK talking to nginx-llm-gateway.
//
// run.sh starts a private nginx with
//     location /v1/ { llm_pass mock; }            (the gateway, LLM_GATEWAY_URL)
//     llm_provider mock { url http://127.0.0.1:PORT2/v1; key sk-mock;
//                         model gpt-4o-mini mock-small; }
//     location / { llm_mock key=sk-mock; }        (the provider on PORT2)
//     location /stall/v1/ { llm_pass stalling; }  (LLM_GATEWAY_STALL_URL)
//     llm_provider stalling { ...the same mock...; read_timeout 1s;
//                             header X-Mock-Stall 2; }
// and runs this file with `node --test`.
//
// The SDK sends `Authorization: Bearer not-the-provider-key`; the mock answers
// 401 to anything but `Bearer sk-mock`, so every 200 below also shows that the
// gateway replaced the client's key with the provider's.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = process.env.LLM_GATEWAY_URL;
const stallURL = process.env.LLM_GATEWAY_STALL_URL;
if (!baseURL || !stallURL) {
    throw new Error('LLM_GATEWAY_URL / LLM_GATEWAY_STALL_URL are not set (run this through run.sh)');
}

const client = new OpenAI({
    baseURL,
    apiKey: 'not-the-provider-key',
    maxRetries: 0,
    timeout: 10_000,
});

const TEXT = 'This is a mock response from the llm_mock provider of nginx-llm-gateway.';
const MESSAGES = [
    { role: 'system', content: 'You are terse.' },     // 14 bytes
    { role: 'user', content: 'Say hello.' },           // 10 bytes
];
const PROMPT_TOKENS = Math.ceil((14 + 10) / 4);         // 6
const COMPLETION_TOKENS = Math.ceil(TEXT.length / 4);   // 18

test('chat.completions.create: non-streaming', async () => {
    const { data: completion, response } = await client.chat.completions
        .create({ model: 'gpt-4o-mini', messages: MESSAGES })
        .withResponse();

    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
    assert.equal(completion.object, 'chat.completion');
    assert.match(completion.id, /^chatcmpl-/);
    // the mock echoes the model it received: the provider's name for the alias
    assert.equal(completion.model, 'mock-small');
    assert.equal(completion.choices.length, 1);
    assert.equal(completion.choices[0].message.role, 'assistant');
    assert.equal(completion.choices[0].message.content, TEXT);
    assert.equal(completion.choices[0].finish_reason, 'stop');
    assert.deepEqual(completion.usage, {
        prompt_tokens: PROMPT_TOKENS,
        completion_tokens: COMPLETION_TOKENS,
        total_tokens: PROMPT_TOKENS + COMPLETION_TOKENS,
    });
});

test('chat.completions.create: streaming', async () => {
    const { data: stream, response } = await client.chat.completions
        .create({ model: 'gpt-4o-mini', messages: MESSAGES, stream: true })
        .withResponse();

    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);

    let content = '';
    let role;
    let finish;
    let chunks = 0;
    let usageSeen = false;
    for await (const chunk of stream) {
        chunks++;
        assert.equal(chunk.object, 'chat.completion.chunk');
        if (chunk.usage) usageSeen = true;
        for (const choice of chunk.choices) {
            if (choice.delta?.role) role = choice.delta.role;
            if (choice.delta?.content) content += choice.delta.content;
            if (choice.finish_reason) finish = choice.finish_reason;
        }
    }

    assert.equal(role, 'assistant');
    assert.equal(content, TEXT);
    assert.equal(finish, 'stop');
    // role chunk + 4 content chunks (llm_mock default) + finish chunk
    assert.equal(chunks, 6);
    assert.equal(usageSeen, false, 'no usage chunk without stream_options.include_usage');
});

test('chat.completions.create: streaming with stream_options.include_usage', async () => {
    const stream = await client.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: MESSAGES,
        stream: true,
        stream_options: { include_usage: true },
    });

    let content = '';
    let finish;
    let usage;
    let usageChunks = 0;
    for await (const chunk of stream) {
        for (const choice of chunk.choices) {
            if (choice.delta?.content) content += choice.delta.content;
            if (choice.finish_reason) finish = choice.finish_reason;
        }
        if (chunk.usage) {
            usageChunks++;
            assert.deepEqual(chunk.choices, [], 'the usage chunk has "choices": []');
            usage = chunk.usage;
        }
    }

    assert.equal(content, TEXT);
    assert.equal(finish, 'stop');
    assert.equal(usageChunks, 1);
    assert.deepEqual(usage, {
        prompt_tokens: PROMPT_TOKENS,
        completion_tokens: COMPLETION_TOKENS,
        total_tokens: PROMPT_TOKENS + COMPLETION_TOKENS,
    });
});

test('chat.completions.stream helper: finalChatCompletion', async () => {
    // the SDK's higher-level helper re-assembles a chat.completion from the chunks
    const runner = client.chat.completions.stream({ model: 'gpt-4o-mini', messages: MESSAGES });
    const final = await runner.finalChatCompletion();
    assert.equal(final.choices[0].message.content, TEXT);
    assert.equal(final.choices[0].finish_reason, 'stop');
});

test('embeddings.create (encoding_format: float)', async () => {
    const res = await client.embeddings.create({
        model: 'gpt-4o-mini',
        input: ['first text', 'second text'],
        encoding_format: 'float',
    });

    assert.equal(res.object, 'list');
    assert.equal(res.model, 'mock-small');
    assert.ok(Array.isArray(res.data) && res.data.length >= 1, 'at least one embedding');
    res.data.forEach((item, i) => {
        assert.equal(item.object, 'embedding');
        assert.equal(item.index, i);
        assert.equal(item.embedding.length, 8);
        for (const x of item.embedding) assert.equal(typeof x, 'number');
    });
    assert.equal(typeof res.usage.prompt_tokens, 'number');
    assert.equal(res.usage.total_tokens, res.usage.prompt_tokens);
});

test('embeddings.create with the SDK default (base64 requested)', async () => {
    const res = await client.embeddings.create({ model: 'gpt-4o-mini', input: 'text' });
    assert.equal(res.data[0].embedding.length, 8);
    for (const x of res.data[0].embedding) {
        assert.ok(x >= 0 && x < 1, `component in [0,1): ${x}`);
    }
});

test('models.list', async () => {
    const models = [];
    for await (const m of client.models.list()) models.push(m);

    assert.deepEqual(models, [
        { id: 'gpt-4o-mini', object: 'model', created: 0, owned_by: 'mock' },
    ]);
});

test('unknown model: 404 model_not_found -> NotFoundError', async () => {
    await assert.rejects(
        client.chat.completions.create({ model: 'no-such-model', messages: MESSAGES }),
        (err) => {
            assert.ok(err instanceof OpenAI.NotFoundError, `NotFoundError expected, got ${err?.constructor?.name}: ${err?.message}`);
            assert.ok(err instanceof OpenAI.APIError);
            assert.equal(err.status, 404);
            assert.equal(err.code, 'model_not_found');
            assert.equal(typeof err.error?.message, 'string');
            assert.ok(err.error.message.length > 0);
            return true;
        },
    );
});

test('invalid request: empty messages -> BadRequestError invalid_messages', async () => {
    await assert.rejects(
        client.chat.completions.create({ model: 'gpt-4o-mini', messages: [] }),
        (err) => {
            assert.ok(err instanceof OpenAI.BadRequestError, `BadRequestError expected, got ${err?.constructor?.name}: ${err?.message}`);
            assert.equal(err.status, 400);
            assert.equal(err.code, 'invalid_messages');
            return true;
        },
    );
});

test('provider error passed through: X-Mock-Status 429 -> RateLimitError', async () => {
    await assert.rejects(
        client.chat.completions.create(
            { model: 'gpt-4o-mini', messages: MESSAGES },
            { headers: { 'X-Mock-Status': '429' } },
        ),
        (err) => {
            assert.ok(err instanceof OpenAI.RateLimitError, `RateLimitError expected, got ${err?.constructor?.name}: ${err?.message}`);
            assert.equal(err.status, 429);
            assert.equal(err.headers?.get('retry-after'), '1');
            return true;
        },
    );
});

test('the gateway\'s own limit: RateLimitError on the 429, x-ratelimit-* headers read', async () => {
    const limited = new OpenAI({
        baseURL: baseURL.replace(/\/v1\/?$/, '/limited/v1'),
        apiKey: 'not-the-provider-key',
        maxRetries: 0,
        timeout: 10_000,
        defaultHeaders: { 'X-Tenant': `sdk-${process.pid}-${Date.now()}` },
    });

    for (const left of ['1', '0']) {
        const { response } = await limited.chat.completions
            .create({ model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 50 })
            .withResponse();
        assert.equal(response.status, 200);
        assert.equal(response.headers.get('x-ratelimit-limit-requests'), '2');
        assert.equal(response.headers.get('x-ratelimit-remaining-requests'), left);
        assert.equal(response.headers.get('x-ratelimit-limit-tokens'), '100000');
        assert.match(response.headers.get('x-ratelimit-reset-requests') ?? '', /^(\d+h)?(\d+m)?\d+m?s$/);
    }

    await assert.rejects(
        limited.chat.completions.create({ model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 50 }),
        (err) => {
            assert.ok(err instanceof OpenAI.RateLimitError, `RateLimitError expected, got ${err?.constructor?.name}: ${err?.message}`);
            assert.equal(err.status, 429);
            assert.equal(err.code, 'rate_limit_exceeded');
            assert.ok(Number(err.headers?.get('retry-after')) > 0, 'Retry-After');
            assert.equal(err.headers?.get('x-ratelimit-remaining-requests'), '0');
            return true;
        },
    );
});

test('provider stream broken off: the SDK raises an APIError after the first chunks', async () => {
    // provider `stalling` sends 2 events (role, first piece of text) and then
    // nothing; after its read_timeout (1s) the gateway appends
    //     data: {"error":{"message":"The stream of provider stalling ended early",...}}
    // and ends the response. The SDK's Stream throws
    // `new APIError(undefined, data.error, undefined, headers)` on any data
    // event with an `error` field, instead of taking the stream for complete.
    const stalling = new OpenAI({
        baseURL: stallURL,
        apiKey: 'not-the-provider-key',
        maxRetries: 0,
        timeout: 10_000,
    });

    const { data: stream, response } = await stalling.chat.completions
        .create({ model: 'gpt-4o-mini', messages: MESSAGES, stream: true })
        .withResponse();
    assert.equal(response.status, 200);

    let content = '';
    let role;
    let chunks = 0;
    await assert.rejects(
        (async () => {
            for await (const chunk of stream) {
                chunks++;
                assert.equal(chunk.object, 'chat.completion.chunk');
                for (const choice of chunk.choices) {
                    if (choice.delta?.role) role = choice.delta.role;
                    if (choice.delta?.content) content += choice.delta.content;
                    assert.equal(choice.finish_reason ?? null, null, 'no finish chunk');
                }
            }
        })(),
        (err) => {
            assert.ok(err instanceof OpenAI.APIError, `APIError expected, got ${err?.constructor?.name}: ${err?.message}`);
            // raised from the stream, not from an HTTP status
            assert.equal(err.status, undefined);
            assert.equal(err.message, 'The stream of provider stalling ended early');
            assert.equal(err.code, 'provider_stream_error');
            assert.equal(err.type, 'server_error');
            assert.equal(err.param, null);
            assert.deepEqual(err.error, {
                message: 'The stream of provider stalling ended early',
                type: 'server_error',
                param: null,
                code: 'provider_stream_error',
            });
            return true;
        },
    );

    // the 2 events before the stall reached the client: the role chunk and
    // the first of the 4 pieces of the text
    assert.equal(chunks, 2);
    assert.equal(role, 'assistant');
    assert.ok(content.length > 0 && content.length < TEXT.length, `partial text: ${JSON.stringify(content)}`);
    assert.ok(TEXT.startsWith(content), `a prefix of the text: ${JSON.stringify(content)}`);
});
