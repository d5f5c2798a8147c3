// Small typed wrappers for the libcurl and zlib calls that Swift cannot import
// (libcurl itself is loaded on first use: lazy_curl.c):
// curl_easy_setopt/curl_easy_getinfo are variadic, deflateInit2 is a macro.
#ifndef CCURL_SHIM_H
#define CCURL_SHIM_H

#include <curl/curl.h>
#include <zlib.h>
#include <stdlib.h>
#include <string.h>

typedef size_t (*ccurl_data_callback)(char *data, size_t size, size_t count, void *userdata);

static inline CURLcode ccurl_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode ccurl_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode ccurl_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode ccurl_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode ccurl_setopt_callback(CURL *handle, CURLoption option, ccurl_data_callback value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode ccurl_setopt_off(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode ccurl_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}

// One round of a transfer driven through a multi handle: performs, then waits
// up to `wait_ms` for socket activity. Returns 1 while the transfer runs, 0
// once it is done (its result in *result), -1 on a multi-handle error. The
// caller checks its own abort condition between rounds, which
// curl_easy_perform cannot do (its progress callback may come a second late).
static inline int ccurl_multi_step(CURLM *multi, int wait_ms, CURLcode *result) {
    int running = 0;
    if (curl_multi_perform(multi, &running) != CURLM_OK) {
        *result = CURLE_FAILED_INIT;
        return -1;
    }
    if (running == 0) {
        int queued = 0;
        CURLMsg *message;
        *result = CURLE_GOT_NOTHING;
        while ((message = curl_multi_info_read(multi, &queued)) != NULL) {
            if (message->msg == CURLMSG_DONE) *result = message->data.result;
        }
        return 0;
    }
    if (curl_multi_poll(multi, NULL, 0, wait_ms, NULL) != CURLM_OK) {
        *result = CURLE_FAILED_INIT;
        return -1;
    }
    return 1;
}

// Gzips `input` into a malloc'ed buffer (caller frees with free()). Returns 0 on
// success. OTLP/HTTP wants `Content-Encoding: gzip`, i.e. the gzip wrapper
// (windowBits 15 + 16), not raw zlib.
static inline int ccurl_gzip(const unsigned char *input, size_t input_length,
                             unsigned char **output, size_t *output_length) {
    z_stream stream;
    memset(&stream, 0, sizeof(stream));
    if (deflateInit2(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        return -1;
    }
    uLong bound = deflateBound(&stream, (uLong)input_length) + 32;
    unsigned char *buffer = (unsigned char *)malloc(bound);
    if (buffer == NULL) {
        deflateEnd(&stream);
        return -1;
    }
    stream.next_in = (Bytef *)input;
    stream.avail_in = (uInt)input_length;
    stream.next_out = buffer;
    stream.avail_out = (uInt)bound;
    int result = deflate(&stream, Z_FINISH);
    if (result != Z_STREAM_END) {
        deflateEnd(&stream);
        free(buffer);
        return -1;
    }
    *output = buffer;
    *output_length = (size_t)stream.total_out;
    deflateEnd(&stream);
    return 0;
}

#endif
