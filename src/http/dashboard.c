/* dashboard.c - GET /dashboard: the operator's page, served from the binary.
 *
 * The page is three files written for keel (src/http/dashboard/index.html,
 * app.css, app.js), turned into C arrays at build time
 * (cmake/embed.cmake -> dashboard_assets.c), so a node serves its dashboard
 * with nothing to install or download: it works on an air-gapped host. The
 * script and the style are separate routes because the admin port's
 * Content-Security-Policy allows no inline script or style (admin.c). The
 * three files are open routes even when ADMIN_TOKEN is set: a browser
 * cannot send a bearer header when it navigates to a page, and they hold
 * nothing about the node; everything the page then fetches is guarded
 * (docs/decisions/0023).
 */
#include <string.h>

#include "http/admin_internal.h"
#include "keel/error.h"


static int asset(keel_http_res *res, const char *type, const unsigned char *p, size_t n) {
  keel_http_set_header(res, "Cache-Control", "no-cache");
  return keel_http_reply(res, 200, type, p, n);
}

static int h_page(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return asset(res, "text/html; charset=utf-8", keel__dash_index_html, keel__dash_index_html_len);
}

static int h_js(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return asset(res, "text/javascript; charset=utf-8", keel__dash_app_js, keel__dash_app_js_len);
}

static int h_css(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return asset(res, "text/css; charset=utf-8", keel__dash_app_css, keel__dash_app_css_len);
}

int keel__admin_dashboard_routes(keel__admin *a, keel_http_router *r, keel__admin_add_fn add) {
  int rc = add(a, r, "GET", "/dashboard", h_page, KEEL__ADMIN_OPEN);
  if (!rc) rc = add(a, r, "GET", "/dashboard/app.js", h_js, KEEL__ADMIN_OPEN);
  if (!rc) rc = add(a, r, "GET", "/dashboard/app.css", h_css, KEEL__ADMIN_OPEN);
  return rc;
}
