// libcurl, loaded on first use. Only OTLP export needs it, and linking it
// outright maps libcurl and its own dependencies (OpenSSL, Kerberos, LDAP,
// libssh2, nghttp2: about 3 MB of resident pages) into every process at start,
// exporter or not. These definitions carry libcurl's names, so the Swift code
// and shim.h call them unchanged; they are hidden, so they bind only within
// this binary and never interpose on a libcurl that something else loads.
// If libcurl cannot be loaded, every call fails the way libcurl reports
// failure (NULL handles, CURLE_FAILED_INIT) and curl_easy_strerror says why.
#include <curl/curl.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

#define HIDDEN __attribute__((visibility("hidden")))

static struct {
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    void (*easy_cleanup)(CURL *);
    CURLcode (*easy_perform)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    CURLM *(*multi_init)(void);
    CURLMcode (*multi_cleanup)(CURLM *);
    CURLMcode (*multi_add_handle)(CURLM *, CURL *);
    CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
    CURLMcode (*multi_perform)(CURLM *, int *);
    CURLMcode (*multi_poll)(CURLM *, struct curl_waitfd[], unsigned int, int, int *);
    CURLMsg *(*multi_info_read)(CURLM *, int *);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
} curl;
static int curl_loaded;
static char load_error[256] = "libcurl not loaded";
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

static void load_curl(void) {
    void *library = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) {
        snprintf(load_error, sizeof(load_error), "cannot load libcurl: %s", dlerror());
        return;
    }
#define BIND(field, name)                                                                     \
    if ((*(void **)&curl.field = dlsym(library, name)) == NULL) {                             \
        snprintf(load_error, sizeof(load_error), "libcurl.so.4 lacks %s", name);              \
        return;                                                                               \
    }
    BIND(global_init, "curl_global_init")
    BIND(easy_init, "curl_easy_init")
    BIND(easy_cleanup, "curl_easy_cleanup")
    BIND(easy_perform, "curl_easy_perform")
    BIND(easy_strerror, "curl_easy_strerror")
    BIND(easy_setopt, "curl_easy_setopt")
    BIND(easy_getinfo, "curl_easy_getinfo")
    BIND(multi_init, "curl_multi_init")
    BIND(multi_cleanup, "curl_multi_cleanup")
    BIND(multi_add_handle, "curl_multi_add_handle")
    BIND(multi_remove_handle, "curl_multi_remove_handle")
    BIND(multi_perform, "curl_multi_perform")
    BIND(multi_poll, "curl_multi_poll")
    BIND(multi_info_read, "curl_multi_info_read")
    BIND(slist_append, "curl_slist_append")
    BIND(slist_free_all, "curl_slist_free_all")
#undef BIND
    curl_loaded = 1;
}

static int loaded(void) {
    pthread_once(&load_once, load_curl);
    return curl_loaded;
}

// Handles exist only after a successful load, so the calls that take one skip the check.
HIDDEN CURLcode curl_global_init(long flags) { return loaded() ? curl.global_init(flags) : CURLE_FAILED_INIT; }
HIDDEN CURL *curl_easy_init(void) { return loaded() ? curl.easy_init() : NULL; }
HIDDEN void curl_easy_cleanup(CURL *handle) { if (handle != NULL) curl.easy_cleanup(handle); }
HIDDEN CURLcode curl_easy_perform(CURL *handle) { return curl.easy_perform(handle); }
HIDDEN const char *curl_easy_strerror(CURLcode code) { return loaded() ? curl.easy_strerror(code) : load_error; }
HIDDEN CURLM *curl_multi_init(void) { return loaded() ? curl.multi_init() : NULL; }
HIDDEN CURLMcode curl_multi_cleanup(CURLM *multi) { return curl.multi_cleanup(multi); }
HIDDEN CURLMcode curl_multi_add_handle(CURLM *multi, CURL *handle) { return curl.multi_add_handle(multi, handle); }
HIDDEN CURLMcode curl_multi_remove_handle(CURLM *multi, CURL *handle) { return curl.multi_remove_handle(multi, handle); }
HIDDEN CURLMcode curl_multi_perform(CURLM *multi, int *running) { return curl.multi_perform(multi, running); }
HIDDEN CURLMcode curl_multi_poll(CURLM *multi, struct curl_waitfd extra[], unsigned int count, int timeout_ms, int *ret) {
    return curl.multi_poll(multi, extra, count, timeout_ms, ret);
}
HIDDEN CURLMsg *curl_multi_info_read(CURLM *multi, int *queued) { return curl.multi_info_read(multi, queued); }
HIDDEN struct curl_slist *curl_slist_append(struct curl_slist *list, const char *line) {
    return loaded() ? curl.slist_append(list, line) : NULL;
}
HIDDEN void curl_slist_free_all(struct curl_slist *list) { if (list != NULL) curl.slist_free_all(list); }

// The variadic two pass one argument on, typed the way libcurl reads it: by the
// option's (info's) type range, as curl.h defines them.
HIDDEN CURLcode curl_easy_setopt(CURL *handle, CURLoption option, ...) {
    va_list arguments;
    va_start(arguments, option);
    CURLcode result;
    if (option < CURLOPTTYPE_OBJECTPOINT) {
        result = curl.easy_setopt(handle, option, va_arg(arguments, long));
    } else if (option >= CURLOPTTYPE_OFF_T && option < CURLOPTTYPE_BLOB) {
        result = curl.easy_setopt(handle, option, va_arg(arguments, curl_off_t));
    } else {  // object, function and blob pointers
        result = curl.easy_setopt(handle, option, va_arg(arguments, void *));
    }
    va_end(arguments);
    return result;
}

HIDDEN CURLcode curl_easy_getinfo(CURL *handle, CURLINFO info, ...) {
    va_list arguments;
    va_start(arguments, info);
    CURLcode result = curl.easy_getinfo(handle, info, va_arg(arguments, void *));  // always a pointer
    va_end(arguments);
    return result;
}
