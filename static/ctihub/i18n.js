// gettext and interpolate for every page's scripts, in one place. A page that loads Django's JavaScript
// catalog (its head_scripts) has them in its language; this only fills in, for a page that does not, the
// English text as written, so console.js, alerts.js, wallboard.js and history.js need no fallback each.
"use strict";

if (!window.gettext) {
  window.gettext = (text) => text;
}
if (!window.interpolate) {
  // Django's own signature: named values (%(name)s) when the third argument is true, else positional (%s).
  window.interpolate = (format, values, named) => named
    ? format.replace(/%\((\w+)\)s/g, (_, name) => String(values[name]))
    : format.replace(/%s/g, () => String(values.shift()));
}
