// A Lambda-style handler: `event` is the JSON request body, `context` the invocation.
exports.handler = async (event, context) => {
  const name = (event && event.name) || 'world';
  console.log(`greeting ${name}`);
  return { message: `Hello, ${name}!`, requestId: context.awsRequestId };
};
