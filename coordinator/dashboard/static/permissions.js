// Which write actions the page offers to which role. The server decides what is allowed; this table only
// keeps the page from showing buttons that would be refused. A role not listed gets no write action.
const ACTIONS_BY_ROLE = {
  admin: ["cancel", "stop", "start", "restart"],
  operator: ["cancel", "stop", "start", "restart"],
  viewer: [],
};

export function may(role, action) {
  return (ACTIONS_BY_ROLE[role] ?? []).includes(action);
}
