// Hello world: no parsing, no logging, nothing but a response.
export default {
  fetch() {
    return new Response("hello");
  },
};
