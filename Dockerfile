# nginx-llm-gateway: Debian's stock nginx 1.22 + the llm module.
#
#   docker build -t nginx-llm-gateway .
#   docker run --rm -p 8080:8080 nginx-llm-gateway
#   curl http://127.0.0.1:8080/v1/chat/completions \
#        -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}'
#
# The default configuration is conf-examples/quickstart.conf (the gateway on
# port 8080 in front of the built-in mock provider) with the gateway listening
# on all addresses. For real providers mount your own configuration, e.g. one
# based on conf-examples/openai.conf (in the image under
# /etc/nginx/conf-examples/), and pass the keys named by its key_env lines:
#   docker run -p 8080:8080 -e OPENAI_API_KEY -e DEEPSEEK_API_KEY \
#       -v $PWD/my-gateway.conf:/etc/nginx/nginx.conf:ro nginx-llm-gateway
# (its load_module line: load_module modules/ngx_http_llm_module.so;)

# --- build: the same `make build` as CI, which installs its own Debian packages
FROM debian:bookworm-slim AS build

RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN make build \
 && install -D -m 0644 build/nginx/objs/ngx_http_llm_module.so /out/ngx_http_llm_module.so

# --- runtime: nginx and the module's one library
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx libcjson1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/nginx/sites-enabled/default

COPY --from=build /out/ngx_http_llm_module.so /usr/lib/nginx/modules/ngx_http_llm_module.so
COPY conf-examples/ /etc/nginx/conf-examples/

# nginx.conf = quickstart.conf, gateway on all addresses, logs to the
# container's stdout/stderr. Relative paths in it are relative to nginx's
# prefix /usr/share/nginx.
RUN set -eu; \
    { echo 'load_module modules/ngx_http_llm_module.so;'; \
      sed -e 's/listen\( *\)127\.0\.0\.1:8080;/listen\18080;/' \
          /etc/nginx/conf-examples/quickstart.conf; } >/etc/nginx/nginx.conf; \
    grep -Eq '^ *listen +8080;' /etc/nginx/nginx.conf; \
    cp /etc/nginx/conf-examples/llm-prices.json /etc/nginx/llm-prices.json; \
    mkdir -p /usr/share/nginx/logs /usr/share/nginx/tmp; \
    ln -sf /dev/stdout /usr/share/nginx/logs/access.log; \
    ln -sf /dev/stdout /usr/share/nginx/logs/mock.log; \
    ln -sf /dev/stderr /usr/share/nginx/logs/error.log; \
    ln -sf /dev/stdout /var/log/nginx/access.log; \
    ln -sf /dev/stderr /var/log/nginx/error.log; \
    nginx -t

EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
