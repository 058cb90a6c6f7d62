// What the page remembers between views: the session, the view on screen, the one poll timer.
// One object shared by every module, so that a new render (state.seq) or a sign-out is seen
// by the view that is still waiting for an answer.

export const POLL_MS = 2000;

export const state = {
  account: null,
  csrf: "",
  overview: null, // last /overview answer: the header's serial, the restore host list
  viewKey: null, // the hash without its `file` overlay: which view is on screen
  seq: 0, // render generation; a stale render drops its result
  pollTimer: null,
  listing: null, // the browse view on screen: {host, snap, q, entries, next}
  selection: new Map(), // q -> {name, type} in the listing on screen
  detailsPushed: false, // the details dialog was opened by a navigation from its view
  quietClose: false, // the router closes the details dialog: leave the address alone
  flash: null, // a message to show after the next navigation
  planSaved: null, // {host, at, changed}: the plan just saved, for the host page drawn next
};

/** At most one view polls at a time: a new view, or sign-out, ends the previous poll. */
export function stopPolling() {
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
}
