'use strict';

// The payloads of bench/run.sh, and a provider stand-in that streams event
// by event.
//
//   node bench/upstream.js write DIR
//       writes into DIR what the benchmark sends and what its providers
//       answer, all in the shapes of OpenAI's chat completions API:
//         req_1k.json, req_1k_stream.json    the ~1 KB chat request (system
//             prompt, temperature, max_tokens, user), without and with
//             "stream": true and stream_options.include_usage
//         req_32k.json, req_256k.json        the same with a long prompt
//         reply.json                         the 868-byte chat.completion
//         reply.conf                         it as an nginx `return 200`
//         sse_20.conf                        the short stream as
//                                            `return 200`
//         sse_20.txt, sse_2000.txt           streams of 20 and 2,000 chunk
//             events, then the usage chunk and [DONE], as OpenAI sends
//             them when the usage is asked for ("usage":null in each chunk)
//         prices_10.json, prices_2000.json   price tables in LiteLLM's shape
//
//   node bench/upstream.js serve PORT
//       an HTTP/1.1 server (keep-alive) that answers
//         POST /seg/N/v1/chat/completions      the stream of N events, each
//             event its own chunk in its own write (TCP_NODELAY: a segment
//             each), the next one written after the event loop has turned
//         POST /slow/N/MS/v1/chat/completions  the same, MS milliseconds
//             between events (the first at once)
//       with chunked transfer encoding, as providers stream.
//
//   node bench/upstream.js ttft PORT PATH BODY N
//       a client: N streamed requests one after the other on one
//       keep-alive connection, the POST body read from the file BODY;
//       prints the median and the 99th percentile, in ms, of the time from
//       sending a request to receiving the first byte of its body (the
//       first event), and of the time to its end.

const fs = require('fs');
const net = require('net');
const path = require('path');

const ID = 'chatcmpl-BSkKXhT5zsQmJd9ZP3QvKnYkXm2Nc';
const MODEL = 'gpt-4o-mini-2024-07-18';
const FP = 'fp_0392822090';
const CREATED = 1746000000;

const WORDS = ('The gateway reads every event of the stream, counts the text it '
    + 'relays, finds the usage the provider reports at the end and prices it, '
    + 'while the client gets each event as soon as it arrives, unchanged. ')
    .split(' ').filter((w) => w.length);

function piece(i) {
    // a few words of text, about as many as a model sends in a chunk
    let s = '';
    for (let k = 0; k < 3; k++) {
        s += ' ' + WORDS[(i * 3 + k) % WORDS.length];
    }
    return s;
}

function chunk(delta, finish, extra) {
    return 'data: ' + JSON.stringify({
        id: ID,
        object: 'chat.completion.chunk',
        created: CREATED,
        model: MODEL,
        system_fingerprint: FP,
        choices: extra === undefined
            ? [{ index: 0, delta: delta, logprobs: null, finish_reason: finish }]
            : [],
        usage: extra === undefined ? null : extra,
    }) + '\n\n';
}

// the events of a stream of n chunks: the role, n - 2 pieces of text, the
// finish; then the usage chunk and [DONE]
function events(n) {
    const ev = [];
    let text = 0;
    ev.push(chunk({ role: 'assistant', content: '', refusal: null }, null));
    for (let i = 1; i < n - 1; i++) {
        const p = piece(i);
        text += p.length;
        ev.push(chunk({ content: p }, null));
    }
    ev.push(chunk({}, 'stop'));
    const completion = Math.ceil(text / 4);
    ev.push(chunk(null, null, {
        prompt_tokens: 245,
        completion_tokens: completion,
        total_tokens: 245 + completion,
        prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
        completion_tokens_details: {
            reasoning_tokens: 0, audio_tokens: 0,
            accepted_prediction_tokens: 0, rejected_prediction_tokens: 0,
        },
    }));
    ev.push('data: [DONE]\n\n');
    return ev;
}

// a chat.completion of exactly size bytes (with its final newline)
function reply(size) {
    const make = (content) => JSON.stringify({
        id: ID,
        object: 'chat.completion',
        created: CREATED,
        model: MODEL,
        choices: [{
            index: 0,
            message: { role: 'assistant', content: content, refusal: null,
                       annotations: [] },
            logprobs: null,
            finish_reason: 'stop',
        }],
        usage: {
            prompt_tokens: 245, completion_tokens: 96, total_tokens: 341,
            prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
            completion_tokens_details: {
                reasoning_tokens: 0, audio_tokens: 0,
                accepted_prediction_tokens: 0, rejected_prediction_tokens: 0,
            },
        },
        service_tier: 'default',
        system_fingerprint: FP,
    }) + '\n';
    let content = '';
    for (let i = 0; make(content).length < size; i++) {
        content += (i ? ' ' : '') + WORDS[i % WORDS.length];
    }
    content = content.slice(0, content.length - (make(content).length - size));
    return make(content);
}

const PARAGRAPH = 'Nginx is a web server that can also be used as a reverse '
    + 'proxy, load balancer, mail proxy and HTTP cache. An LLM gateway sits '
    + 'between applications and model providers: it holds the provider keys, '
    + 'maps model aliases to provider models ("gpt-4o-mini" to a dated '
    + 'snapshot), splits traffic between providers by weight, streams '
    + 'server-sent events without buffering, and logs which provider and '
    + 'model served each request.\n\n';

// a chat request of about size bytes
function request(size, stream) {
    const make = (text) => {
        const req = {
            model: 'gpt-4o-mini',
            messages: [
                { role: 'system', content: 'You are a helpful assistant that '
                  + 'answers briefly and precisely, in the language of the '
                  + 'question.' },
                { role: 'user', content: 'Summarize the following text in two '
                  + 'sentences.\n\n' + text },
            ],
            temperature: 0.2,
            max_tokens: 256,
            user: 'user-8f14e45fceea167a5a36dedd4bea2543',
        };
        if (stream) {
            req.stream = true;
            req.stream_options = { include_usage: true };
        }
        return JSON.stringify(req);
    };
    let text = '';
    while (make(text + PARAGRAPH).length <= size) {
        text += PARAGRAPH;
    }
    const rest = size - make(text).length;
    if (rest > 0) {
        text += PARAGRAPH.slice(0, rest).replace(/[\\"\n]+$/, '');
    }
    return make(text);
}

function prices(n) {
    // the benchmark's model first; the others named as LiteLLM names them
    const table = {
        'sample_spec': { max_tokens: 'set to max_output_tokens if provider '
                         + 'specifies it', input_cost_per_token: 0 },
    };
    table[MODEL] = {
        max_tokens: 16384, max_input_tokens: 128000, max_output_tokens: 16384,
        input_cost_per_token: 1.5e-07, output_cost_per_token: 6e-07,
        cache_read_input_token_cost: 7.5e-08, litellm_provider: 'openai',
        mode: 'chat', supports_function_calling: true,
        supports_vision: true, supports_prompt_caching: true,
    };
    const families = ['openai', 'azure', 'anthropic', 'bedrock', 'vertex_ai',
                      'gemini', 'mistral', 'groq', 'together_ai', 'deepseek'];
    for (let i = 1; i < n; i++) {
        const f = families[i % families.length];
        table[f + '/model-' + i + '-2025-0' + (1 + i % 9)] = {
            max_tokens: 8192, max_input_tokens: 128000,
            max_output_tokens: 8192,
            input_cost_per_token: (1 + i % 50) * 1e-07,
            output_cost_per_token: (4 + i % 50) * 1e-07,
            litellm_provider: f, mode: 'chat',
        };
    }
    return JSON.stringify(table, null, 4) + '\n';
}

function nginxString(s) {
    if (s.indexOf('$') >= 0) {
        throw new Error('a "$" would be a variable');
    }
    return '"' + s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')
                  .replace(/\n/g, '\\n') + '"';
}

// `return 200` of a text longer than nginx takes in one parameter (4 KB):
// pieces in variables, returned together
function returnConf(name, text) {
    let conf = '';
    let ret = '';
    for (let i = 0, off = 0; off < text.length; i++) {
        let n = 0;
        while (off + n < text.length
               && nginxString(text.slice(off, off + n + 1)).length < 4000) {
            n++;
        }
        conf += 'set $' + name + '_' + i + ' '
                + nginxString(text.slice(off, off + n)) + ';\n';
        ret += '$' + name + '_' + i;
        off += n;
    }
    return conf + 'return 200 "' + ret + '";\n';
}

function write(dir) {
    const files = {
        'req_1k.json': request(1024, false),
        'req_1k_stream.json': request(1024, true),
        'req_32k.json': request(32768, false),
        'req_256k.json': request(262144, false),
        'reply.json': reply(868),
        'sse_20.txt': events(20).join(''),
        'sse_2000.txt': events(2000).join(''),
        'prices_10.json': prices(10),
        'prices_2000.json': prices(2000),
    };
    files['reply.conf'] = 'return 200 ' + nginxString(files['reply.json'])
                          + ';\n';
    files['sse_20.conf'] = returnConf('sse20', files['sse_20.txt']);
    for (const name of Object.keys(files)) {
        fs.writeFileSync(path.join(dir, name), files[name]);
    }
}

// --- the server ----------------------------------------------------------

const streams = new Map();

function stream(n) {
    if (!streams.has(n)) {
        streams.set(n, events(n).map((e) => Buffer.from(
            Buffer.byteLength(e).toString(16) + '\r\n' + e + '\r\n')));
    }
    return streams.get(n);
}

const HEADER = Buffer.from('HTTP/1.1 200 OK\r\n'
    + 'Content-Type: text/event-stream; charset=utf-8\r\n'
    + 'Transfer-Encoding: chunked\r\n'
    + 'Connection: keep-alive\r\n'
    + 'Cache-Control: no-cache\r\n'
    + 'x-request-id: req_bench\r\n\r\n');
const END = Buffer.from('0\r\n\r\n');
const NOT_FOUND = Buffer.from('HTTP/1.1 404 Not Found\r\n'
    + 'Content-Length: 0\r\n\r\n');

function respond(sock, target, done) {
    let m = /^\/seg\/(\d+)\//.exec(target);
    let ev, delay;
    if (m) {
        ev = stream(+m[1]);
        delay = -1;
    } else if ((m = /^\/slow\/(\d+)\/(\d+)\//.exec(target))) {
        ev = stream(+m[1]);
        delay = +m[2];
    } else {
        sock.write(NOT_FOUND);
        return done();
    }

    let i = 0;
    const next = () => {
        if (sock.destroyed) {
            return;
        }
        if (i === 0) {
            sock.write(Buffer.concat([HEADER, ev[i++]]));
        } else if (i < ev.length - 1) {
            sock.write(ev[i++]);
        } else {
            sock.write(Buffer.concat([ev[i++], END]));
            return done();
        }
        if (delay < 0) {
            setImmediate(next);
        } else {
            setTimeout(next, delay);
        }
    };
    next();
}

function serve(port) {
    const server = net.createServer((sock) => {
        sock.setNoDelay(true);
        sock.on('error', () => {});

        let buf = Buffer.alloc(0);
        let skip = 0;           // bytes of the body still to come
        let target = null;      // the request whose body is being read
        let busy = false;

        const parse = () => {
            while (!busy) {
                if (target === null) {
                    const end = buf.indexOf('\r\n\r\n');
                    if (end < 0) {
                        return;
                    }
                    const head = buf.toString('latin1', 0, end);
                    buf = buf.subarray(end + 4);
                    target = head.split(' ', 2)[1] || '/';
                    const cl = /\r\ncontent-length:\s*(\d+)/i.exec(head);
                    skip = cl ? +cl[1] : 0;
                }
                const n = Math.min(skip, buf.length);
                buf = buf.subarray(n);
                skip -= n;
                if (skip > 0) {
                    return;
                }
                const t = target;
                target = null;
                busy = true;
                respond(sock, t, () => {
                    busy = false;
                    setImmediate(parse);
                });
            }
        };

        sock.on('data', (data) => {
            buf = buf.length ? Buffer.concat([buf, data]) : data;
            parse();
        });
    });

    server.listen(port, '127.0.0.1', () => {
        if (process.send) {
            process.send('ready');
        }
    });
}

// --- the time to the first event -----------------------------------------

function ttft(port, target, bodyFile, n) {
    const body = fs.readFileSync(bodyFile);
    const head = Buffer.from('POST ' + target + ' HTTP/1.1\r\n'
        + 'Host: 127.0.0.1\r\n'
        + 'Content-Type: application/json\r\n'
        + 'Authorization: Bearer sk-client-not-forwarded\r\n'
        + 'Content-Length: ' + body.length + '\r\n\r\n');
    const first = [];
    const total = [];
    const sock = net.connect(port, '127.0.0.1');
    sock.setNoDelay(true);

    let buf = Buffer.alloc(0);
    let start, gotFirst, inBody;

    const send = () => {
        buf = Buffer.alloc(0);
        gotFirst = false;
        inBody = false;
        start = process.hrtime.bigint();
        sock.write(Buffer.concat([head, body]));
    };

    const ms = (t) => Number(t - start) / 1e6;

    sock.on('data', (data) => {
        const now = process.hrtime.bigint();
        buf = Buffer.concat([buf, data]);
        if (!inBody) {
            const end = buf.indexOf('\r\n\r\n');
            if (end < 0) {
                return;
            }
            const status = buf.toString('latin1', 9, 12);
            if (status !== '200') {
                process.stderr.write('ttft: status ' + status + '\n');
                process.exit(1);
            }
            buf = buf.subarray(end + 4);
            inBody = true;
        }
        if (!gotFirst && buf.length) {
            gotFirst = true;
            first.push(ms(now));
        }
        // the end of a chunked body
        if (buf.length >= 5 && buf.subarray(buf.length - 5).toString() === '0\r\n\r\n') {
            total.push(ms(now));
            if (first.length < n) {
                send();
            } else {
                sock.end();
                const q = (a, p) => {
                    a.sort((x, y) => x - y);
                    return a[Math.min(a.length - 1, Math.floor(a.length * p))];
                };
                process.stdout.write([q(first, 0.5), q(first, 0.99),
                    q(total, 0.5), q(total, 0.99)]
                    .map((v) => v.toFixed(3)).join(' ') + '\n');
            }
        }
    });
    sock.on('error', (e) => {
        process.stderr.write('ttft: ' + e.message + '\n');
        process.exit(1);
    });
    sock.on('connect', send);
}

if (process.argv[2] === 'write' && process.argv[3]) {
    write(process.argv[3]);
} else if (process.argv[2] === 'serve' && process.argv[3]) {
    serve(+process.argv[3]);
} else if (process.argv[2] === 'ttft' && process.argv.length === 7) {
    ttft(+process.argv[3], process.argv[4], process.argv[5], +process.argv[6]);
} else {
    process.stderr.write('usage: node upstream.js write DIR | serve PORT'
                         + ' | ttft PORT PATH BODY N\n');
    process.exit(2);
}
